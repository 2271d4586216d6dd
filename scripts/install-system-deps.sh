#!/bin/sh
# System programs the test suite runs for real: promtool and a Prometheus server, a Mosquitto
# MQTT broker, Alertmanager and Pushgateway, and headless Chromium (the status page test drives it over
# the DevTools protocol), docker-compose to validate the compose file. Installed with apt-get when running as root.
#
# `install-system-deps.sh demo` installs only what `make demo` runs: the Mosquitto broker.
set -e
missing=""
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || missing="$missing $2"; }
case "${1:-test}" in
demo)
    need mosquitto mosquitto ;;
*)
    need promtool prometheus
    need prometheus prometheus
    need mosquitto mosquitto
    need prometheus-alertmanager prometheus-alertmanager
    need prometheus-pushgateway prometheus-pushgateway
    need chromium chromium
    # `docker-compose config` validates the shipped docker-compose.yml (no Docker engine needed).
    need docker-compose docker-compose
    # `systemd-analyze verify` and `security` check deploy/systemd (systemd need not be running).
    need systemd-analyze systemd
    # `kubectl kustomize` renders deploy/kubernetes (kustomize v5: kubectl 1.27 or later). Debian's
    # own kubernetes-client is too old; kubectl comes from the pkgs.k8s.io apt source where it is
    # set up, and the Kubernetes tests skip, saying so, without it.
    if ! command -v kubectl >/dev/null 2>&1 && apt-cache show kubectl >/dev/null 2>&1; then
        missing="$missing kubectl"
    fi ;;
esac
[ -z "$missing" ] && exit 0
packages=$(echo $missing | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing system packages: $packages"
    apt-get update -qq
    # Debian starts these as services on install; the tests run their own instances.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages
    rm -f /usr/sbin/policy-rc.d
else
    echo "Missing system packages: $packages" >&2
    echo "Install them (sudo apt-get install $packages); tests that need them will be skipped." >&2
fi
