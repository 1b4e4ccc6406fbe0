// A run's page follows the run's events (Server-Sent Events): each one reloads the page's live
// part through htmx ("crewline:changed", a burst of events is one reload). A browser without
// EventSource, or a stream that keeps failing, polls every second instead ("crewline:poll").
// The live part of a finished run asks for nothing more, and the stream is closed.
(function () {
  "use strict";
  var holder = document.querySelector("[data-events]");
  if (!holder) return;

  function finished() {
    var live = document.getElementById("live");
    return !live || !live.hasAttribute("hx-get");
  }
  function fire(name) {
    document.body.dispatchEvent(new CustomEvent(name));
  }
  var pending = null;
  function soon() {
    if (pending === null) {
      pending = setTimeout(function () { pending = null; fire("crewline:changed"); }, 100);
    }
  }
  function poll() {
    var timer = setInterval(function () {
      if (finished()) clearInterval(timer); else fire("crewline:poll");
    }, 1000);
  }

  if (finished()) return;
  if (!window.EventSource) { poll(); return; }
  var source = new EventSource(holder.getAttribute("data-events"));
  var failures = 0;
  ["run", "step", "turn", "tool", "approval", "checks"].forEach(function (kind) {
    source.addEventListener(kind, function () { failures = 0; soon(); });
  });
  source.addEventListener("open", soon);  // (re)connected: catch up on anything missed
  source.addEventListener("error", function () {
    if (finished()) { source.close(); return; }
    failures += 1;
    if (source.readyState === EventSource.CLOSED || failures > 5) { source.close(); poll(); }
  });
  document.body.addEventListener("htmx:afterSwap", function () {
    if (finished()) source.close();
  });
})();
