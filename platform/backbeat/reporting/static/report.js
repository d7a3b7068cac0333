/* backbeat report: sort and filter tables; on served pages, follow runs in progress.
   Plain JavaScript, no library, no network on pages opened from the file system. */
(function () {
  "use strict";

  function cellValue(row, index, type) {
    var cell = row.cells[index];
    /* a cell may give its sort key (the name, without the description under it) */
    var text = !cell ? "" : cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (type === "number") {
      var n = parseFloat(text);
      return isNaN(n) ? null : n;
    }
    return text.toLowerCase();
  }

  function sortTable(table, index, th) {
    var type = th.getAttribute("data-type") || "text";
    var ascending = !th.classList.contains("asc");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.classList.remove("asc", "desc"); });
    th.classList.add(ascending ? "asc" : "desc");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type), y = cellValue(b, index, type);
      if (x === y) { return 0; }
      if (x === null) { return 1; }  /* empty cells last, whatever the direction */
      if (y === null) { return -1; }
      var c = x < y ? -1 : 1;
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function setUpSorting() {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      if (!table.tHead) { return; }
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        th.addEventListener("click", function () { sortTable(table, index, th); });
      });
    });
  }

  function setUpFilters() {
    document.querySelectorAll("input.filter").forEach(function (input) {
      var table = document.getElementById(input.getAttribute("data-filter"));
      var none = document.getElementById("no-match");
      if (!table) { return; }
      input.addEventListener("input", function () {
        var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
        var shown = 0;
        Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
          var text = row.textContent.toLowerCase();
          var match = words.every(function (w) { return text.indexOf(w) >= 0; });
          row.hidden = !match;
          if (match) { shown += 1; }
        });
        if (none) { none.hidden = shown > 0; }
      });
    });
  }

  /* -- live pages (backbeat serve) -------------------------------------------------------- */
  function colours() {
    var el = document.getElementById("state-colours");
    return el ? JSON.parse(el.textContent) : {};
  }

  function showProgress(doc, fills) {
    var box = document.getElementById("progress");
    var list = document.getElementById("progress-blocks");
    if (!box || !list) { return; }
    box.hidden = !doc.running;
    if (!doc.running) { return; }
    list.textContent = "";
    Object.keys(doc.progress.blocks).forEach(function (name) {
      var b = doc.progress.blocks[name];
      var li = document.createElement("li");
      var units = b.done !== undefined ? " (" + b.done + "/" + (b.total || "?") + " units)" : "";
      li.textContent = name + ": " + b.state + units;
      list.appendChild(li);
      var node = document.querySelector('g.node[data-node="' + CSS.escape(name) + '"]');
      if (node) {
        var state = b.state === "ran" ? "done" : b.state;
        node.setAttribute("data-state", state);
        var shape = node.querySelector(".shape");
        if (shape && fills[state]) { shape.setAttribute("fill", fills[state]); }
      }
    });
  }

  function followExperiment() {
    var slug = document.body.getAttribute("data-slug");
    var lastRun = document.body.getAttribute("data-last-run");
    var fills = colours();
    var wasRunning = false;
    function poll() {
      fetch("api/progress/" + encodeURIComponent(slug) + ".json", { cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (doc) {
          if (!doc) { return; }
          showProgress(doc, fills);
          if ((wasRunning && !doc.running) || (doc.last_run || "") !== lastRun) {
            window.location.reload();  /* a run ended: show its results */
            return;
          }
          wasRunning = doc.running;
        })
        .catch(function () { /* the server stopped: keep the page as it is */ })
        .then(function () { window.setTimeout(poll, 1000); });
    }
    poll();
  }

  function followIndex() {
    var rows = document.querySelectorAll("tr[data-experiment]");
    function poll() {
      fetch("api/runs.json", { cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (doc) {
          if (!doc) { return; }
          rows.forEach(function (row) {
            var status = row.querySelector(".status");
            var name = row.getAttribute("data-experiment");
            if (!status) { return; }
            if (doc.running[name]) {
              if (!status.hasAttribute("data-was")) { status.setAttribute("data-was", status.textContent); }
              status.textContent = "running";
              status.className = "status status-running";
            } else if (status.hasAttribute("data-was")) {
              window.location.reload();
            }
          });
        })
        .catch(function () { /* the server stopped */ })
        .then(function () { window.setTimeout(poll, 2000); });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpSorting();
    setUpFilters();
    if (document.body.getAttribute("data-live") === "true") {
      if (document.body.hasAttribute("data-slug")) { followExperiment(); } else { followIndex(); }
    }
  });
}());
