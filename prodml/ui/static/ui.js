// Refresh a running run's stages in place until the run ends (the page works without this:
// a <noscript> refresh reloads it instead).
(function () {
  "use strict";
  var table = document.getElementById("stages");
  if (!table) { return; }
  var run = table.getAttribute("data-run");
  function refresh() {
    fetch("/runs/" + encodeURIComponent(run) + "/stages", { headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("stages");
        var status = doc.querySelector(".run-status");
        if (!fresh) { return; }
        document.getElementById("stages").replaceWith(fresh);
        var old = document.querySelector(".run-status");
        if (old && status) { old.replaceWith(status); }
        if (fresh.getAttribute("data-status") === "running") { setTimeout(refresh, 1500); }
        else { window.location.reload(); }  // outputs and log are complete now
      })
      .catch(function () { setTimeout(refresh, 3000); });
  }
  setTimeout(refresh, 1500);
})();
