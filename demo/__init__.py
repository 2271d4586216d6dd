"""`make demo` (`python -m demo`): the device simulators and the real exporter daemon together.

Not part of the installed exporter: it runs from a source checkout, beside `simulators/`.
"""

from .app import COMPOSE_HINT, PARTICIPANTS, Participant, config_document, main, run

__all__ = ["COMPOSE_HINT", "PARTICIPANTS", "Participant", "config_document", "main", "run"]
