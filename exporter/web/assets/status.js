// The server renders every row (exporter/web/statuspage.py). This script fetches the page again every
// few seconds and swaps in its live parts, and between fetches re-ages the times that cells
// carry as data-at (Unix seconds) and data-format, relative to the server's clock.
(function () {
  "use strict";
  var every = Math.max(1, Number(document.body.dataset.refresh) || 5) * 1000;
  var LIVE = ["summary", "reload-note", "targets"];
  var note = document.getElementById("refreshed");
  var offset = 0, refreshes = 0;  // offset: the server's clock minus the browser's, in seconds

  // As statuspage._span.
  function span(s) {
    s = Math.abs(s);
    return s < 90 ? Math.round(s) + "s" : s < 5400 ? Math.round(s / 60) + "m"
      : s < 172800 ? Math.round(s / 3600) + "h" : Math.round(s / 86400) + "d";
  }
  var formats = {
    ago: function (at, now) { return span(now - at) + " ago"; },
    until: function (at, now) { return at <= now ? "now" : "in " + span(at - now); },
    expiry: function (at, now) { return at <= now ? "expired " + span(now - at) + " ago" : "in " + span(at - now); }
  };

  function learnClock() {
    offset = Number(document.getElementById("targets").dataset.now) - Date.now() / 1000;
  }
  function age() {
    var now = Date.now() / 1000 + offset;
    Array.prototype.forEach.call(document.querySelectorAll("[data-at]"), function (cell) {
      var format = formats[cell.dataset.format];
      if (format) cell.textContent = format(Number(cell.dataset.at), now);
    });
  }
  function swap(text) {
    var fresh = new DOMParser().parseFromString(text, "text/html");
    var parts = LIVE.map(function (id) { return [fresh.getElementById(id), document.getElementById(id)]; });
    if (parts.some(function (p) { return !p[0] || !p[1]; })) throw new Error("not the status page");
    parts.forEach(function (p) { p[1].innerHTML = p[0].innerHTML; });
    var tbody = document.getElementById("targets");
    tbody.dataset.now = fresh.getElementById("targets").dataset.now;
    tbody.dataset.renderedBy = "script";
  }
  function refresh() {
    fetch(location.pathname + location.search, {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (text) {
      swap(text);
      learnClock();
      age();
      refreshes += 1;
      document.body.dataset.refreshes = refreshes;
      note.dataset.by = "script"; note.className = "";
      note.textContent = "Live: updated " + new Date().toLocaleTimeString() + ", every " + every / 1000 + "s.";
    }).catch(function (e) {
      note.className = "stale";
      note.textContent = "Cannot reach the exporter (" + e.message + "); the table may be out of date. Retrying.";
    }).then(function () { setTimeout(refresh, every); });
  }

  learnClock();
  setInterval(age, 1000);
  setTimeout(refresh, every);
})();
