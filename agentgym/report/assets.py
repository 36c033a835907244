"""The report page's inline CSS and JavaScript (kept in Python so wheels ship them without
package-data rules).

The script never assigns ``innerHTML``: every text from a trajectory goes through
``document.createTextNode`` / ``textContent``, so markup in model output or observations shows as
text and never runs.
"""

CSS = r"""
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --bg:#f6f7f9; --card:#fff; --ok:#137333; --bad:#b3261e;
        --mark:#ffe27a; --markw:#ffd0a8; --accent:#1f5fbf; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 "DejaVu Sans", system-ui, sans-serif; color:var(--fg); background:var(--bg); }
header.top { background:#1d2330; color:#fff; padding:12px 24px; }
header.top h1 { margin:0; font-size:19px; font-weight:600; }
header.top .sub { color:#b9c2d3; font-size:12.5px; }
main { padding:8px 24px 40px; max-width:1500px; }
h2 { font-size:16.5px; margin:22px 0 8px; border-bottom:1px solid var(--line); padding-bottom:4px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 14px; }
table.kv td { padding:2px 12px 2px 0; vertical-align:top; }
table.kv td:first-child { color:var(--muted); white-space:nowrap; }
.big { font-size:20px; font-weight:600; }
.warn { background:#fff4e5; border:1px solid #f0c27a; border-radius:6px; padding:6px 10px; margin:6px 0; font-size:13px; }
.warn li { margin:1px 0; }
.charts { display:flex; flex-wrap:wrap; gap:10px; }
svg.chart { background:var(--card); border:1px solid var(--line); border-radius:6px; }
svg.chart .ct { font-size:12px; font-weight:600; fill:var(--fg); }
svg.chart .tk, svg.chart .lg { font-size:10px; fill:var(--muted); }
svg.chart .na { font-size:12px; fill:var(--muted); }
svg.chart .pa { fill:none; stroke:var(--line); }
svg.chart .gr { stroke:#eef0f4; }
.filters { display:flex; flex-wrap:wrap; gap:10px; align-items:center; background:var(--card);
           border:1px solid var(--line); border-radius:6px; padding:8px 12px; margin-bottom:8px; }
.filters label { color:var(--muted); font-size:12.5px; }
.filters select, .filters input { font:inherit; padding:2px 4px; }
.count { margin-left:auto; color:var(--muted); }
table.list { border-collapse:collapse; width:100%; background:var(--card); border:1px solid var(--line); }
table.list th { text-align:left; font-weight:600; font-size:12.5px; color:var(--muted); border-bottom:1px solid var(--line); padding:4px 8px; }
table.list td { padding:4px 8px; border-bottom:1px solid #eef0f4; }
td, .src, .note { overflow-wrap:anywhere; }  /* a 10,000-character id must not widen the page */
tr.traj-row, tr.cmp-row { cursor:pointer; }
tr.traj-row:hover, tr.cmp-row:hover { background:#eef4ff; }
tr.open { background:#e7efff; }
.ok { color:var(--ok); font-weight:600; } .bad { color:var(--bad); font-weight:600; }
.pager { margin:8px 0; display:flex; gap:8px; align-items:center; }
.pager button { font:inherit; }
.detail { padding:8px 6px 14px; }
.step { background:#fbfcfd; border:1px solid var(--line); border-radius:6px; margin:8px 0; padding:6px 10px; }
.step.has-target { border-left:4px solid #e0a800; }
.step h4 { margin:2px 0 6px; font-size:13.5px; }
.lbl { color:var(--muted); font-size:11.5px; text-transform:uppercase; letter-spacing:.04em; margin-top:6px; }
pre { margin:2px 0; white-space:pre-wrap; word-break:break-word; font:12.5px/1.4 "DejaVu Sans Mono", monospace;
      background:#f1f3f6; padding:5px 7px; border-radius:4px; max-height:360px; overflow:auto; }
pre.action { background:#f5f0ff; }
mark.tgt { background:var(--mark); outline:1px solid #e0a800; border-radius:2px; padding:0 1px; }
mark.tgt.whole { background:var(--markw); outline-color:#e07b00; }
.note { color:var(--muted); font-size:12px; font-style:italic; }
.fb { margin:4px 0; padding:3px 6px; border-left:3px solid var(--line); }
.badge { display:inline-block; font-size:11px; font-weight:600; border-radius:3px; padding:0 5px; margin-right:6px; color:#fff; }
.k-error { background:#b3261e; } .fb.k-error-b { border-color:#b3261e; }
.k-observation { background:#5b6475; } .k-page_diff { background:#1f5fbf; } .k-state_diff { background:#0b7a75; }
.k-reference { background:#6a3fb5; } .k-outcome { background:#137333; } .k-hint { background:#c77700; }
.src { color:var(--muted); font-size:11.5px; }
.diff .add { color:#137333; background:#e6f4ea; display:block; }
.diff .del { color:#b3261e; background:#fce8e6; display:block; }
.diff .hunk { color:#6a3fb5; display:block; }
table.changes { border-collapse:collapse; font-size:12px; margin:2px 0; }
table.changes td, table.changes th { border:1px solid var(--line); padding:1px 6px; text-align:left; vertical-align:top; }
.side { display:grid; grid-template-columns:1fr 1fr; gap:12px; }
.side > div { min-width:0; }
.tabs button { font:inherit; padding:3px 10px; margin-right:4px; border:1px solid var(--line); background:var(--card); border-radius:4px; }
.tabs button.on { background:var(--accent); color:#fff; border-color:var(--accent); }
details > summary { cursor:pointer; color:var(--accent); font-size:12.5px; }
"""

JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("agentgym-data").textContent);
  var PAGE = 50;
  var RUNS = DATA.runs;

  function el(tag, cls) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    for (var i = 2; i < arguments.length; i++) {
      var k = arguments[i];
      if (k === null || k === undefined || k === false) continue;
      e.appendChild(typeof k === "object" ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "n/a";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    return String(v);
  }
  // Long texts are stored once per run (data.Strings): a number in a text field is an index.
  function resolve(run, t) {
    if (t._resolved) return t;
    function T(v) { return typeof v === "number" ? run.strings[v] : v; }
    t.request = T(t.request);
    t.steps.forEach(function (s) {
      s.prompt = T(s.prompt); s.action = T(s.action); s.obs = T(s.obs); s.info = T(s.info);
      s.reply.forEach(function (m) { m.content = T(m.content); });
      s.fb.forEach(function (f) { f.text = T(f.text); f.payload = T(f.payload); });
    });
    t._resolved = true;
    return t;
  }
  function pretty(text) {  // payloads come compact (and may be cut): indent when they parse
    try { return JSON.stringify(JSON.parse(text), null, 1); } catch (e) { return text; }
  }
  function okSpan(ok) { return el("span", ok ? "ok" : "bad", ok ? "success" : "failure"); }

  // ------------------------------------------------------------------ one trajectory
  function actionPre(step) {
    var pre = el("pre", "action");
    var text = step.action;
    if (!step.marks.length) { pre.textContent = text; return pre; }
    var cuts = [0, text.length];
    step.marks.forEach(function (m) { cuts.push(m.s, m.e); });
    cuts = cuts.filter(function (c, i, a) { return a.indexOf(c) === i; }).sort(function (a, b) { return a - b; });
    for (var i = 0; i + 1 < cuts.length; i++) {
      var a = cuts[i], b = cuts[i + 1], piece = text.slice(a, b);
      var on = step.marks.filter(function (m) { return m.s <= a && b <= m.e && m.s < m.e; });
      if (!on.length) { pre.appendChild(document.createTextNode(piece)); continue; }
      var mk = el("mark", "tgt" + (on.some(function (m) { return m.whole; }) ? " whole" : ""), piece);
      mk.dataset.targets = on.map(function (m) { return m.t; }).join(",");
      mk.title = "learner target " + mk.dataset.targets;
      pre.appendChild(mk);
    }
    // A target whose tokens decode to nothing (an EOS, say) still shows where it is.
    step.marks.forEach(function (m) {
      if (m.s === m.e) {
        var mk = el("mark", "tgt empty", "\u2205");
        mk.dataset.targets = String(m.t); mk.title = "learner target " + m.t + " (tokens that decode to no text)";
        pre.appendChild(mk);
      }
    });
    return pre;
  }

  function diffPre(text) {
    var pre = el("pre", "diff");
    text.split("\n").forEach(function (line) {
      var c = line.charAt(0);
      var cls = line.slice(0, 2) === "@@" ? "hunk" : (c === "+" && line.slice(0, 3) !== "+++") ? "add" :
                (c === "-" && line.slice(0, 3) !== "---") ? "del" : "";
      pre.appendChild(cls ? el("span", cls, line) : document.createTextNode(line + "\n"));
    });
    return pre;
  }

  function feedbackBlock(f) {
    var box = el("div", "fb" + (f.kind === "error" ? " k-error-b" : ""),
                 el("span", "badge k-" + f.kind, f.kind), el("span", "src", "from " + f.source));
    box.dataset.kind = f.kind;
    if (f.kind === "page_diff") box.appendChild(diffPre(f.text));
    else if (f.kind === "state_diff" && f.changes && f.changes.length) {
      var keys = [];
      f.changes.forEach(function (c) { Object.keys(c).forEach(function (k) { if (keys.indexOf(k) < 0) keys.push(k); }); });
      var t = el("table", "changes"), hr = el("tr");
      keys.forEach(function (k) { hr.appendChild(el("th", null, k)); });
      t.appendChild(hr);
      f.changes.forEach(function (c) {
        var tr = el("tr");
        keys.forEach(function (k) { tr.appendChild(el("td", null, c[k] === undefined ? "" : c[k])); });
        t.appendChild(tr);
      });
      box.appendChild(t);
    } else if (f.text) box.appendChild(el("pre", null, f.text));
    if (f.payload) box.appendChild(el("details", null, el("summary", null, "payload"), el("pre", null, pretty(f.payload))));
    return box;
  }

  function stepBlock(traj, step, index) {
    var sec = el("section", "step" + (step.marks.length ? " has-target" : ""));
    sec.dataset.step = String(index);
    var flags = [step.term ? "terminated" : "", step.trunc ? "truncated" : ""].filter(Boolean).join(", ");
    sec.appendChild(el("h4", null, "Step " + index + " \u00b7 reward " + fmt(step.r) + " \u00b7 " + step.ntok +
                       " action tokens" + (flags ? " \u00b7 " + flags : "")));
    sec.appendChild(el("div", "lbl", "prompt (tail)"));
    sec.appendChild(el("pre", "prompt", step.prompt));
    sec.appendChild(el("div", "lbl", "action"));
    sec.appendChild(actionPre(step));
    if (!step.action.trim())
      sec.appendChild(el("div", "note", step.action.length ? "the action is " + step.action.length +
                         " whitespace characters only" : "the action is empty"));
    step.marks.forEach(function (m) {
      var t = traj.tgt[m.t];
      var line = "learner target " + m.t + ": tokens [" + t.span[0] + ", " + t.span[1] + ")" +
                 (t.source ? " selected by " + t.source : "");
      sec.appendChild(el("div", "note", line));
      if (m.whole) sec.appendChild(el("div", "note", "token offsets unavailable for this step (no tokenizer, no recorded offsets): the WHOLE action is highlighted"));
      if (t.hint) sec.appendChild(el("div", "fb", el("span", "badge k-hint", "target hint"), el("pre", null, t.hint)));
    });
    sec.appendChild(el("div", "lbl", "environment reply"));
    if (step.reply.length) {
      step.reply.forEach(function (m) {
        sec.appendChild(el("div", "src", m.role + (m.name ? " \u00b7 " + m.name : "")));
        sec.appendChild(el("pre", "reply", m.content));
      });
    } else sec.appendChild(el("pre", "reply", step.obs || "(no reply)"));
    if (step.fb.length) {
      sec.appendChild(el("div", "lbl", "feedback (" + step.fb.length + ")"));
      step.fb.forEach(function (f) { sec.appendChild(feedbackBlock(f)); });
    }
    if (step.info && step.info !== "{}")
      sec.appendChild(el("details", null, el("summary", null, "step info"), el("pre", null, pretty(step.info))));
    return sec;
  }

  function trajectoryDetail(run, traj) {
    resolve(run, traj);
    var d = el("div", "detail");
    d.dataset.traj = String(traj.i);
    var head = el("table", "kv");
    [["task", traj.task], ["group", traj.group], ["env", traj.env], ["update / phase", fmt(traj.update) + " / " + fmt(traj.phase)],
     ["learner", fmt(traj.learner)], ["final reward", fmt(traj.r)], ["steps", traj.n]].forEach(function (kv) {
      head.appendChild(el("tr", null, el("td", null, kv[0]), el("td", null, kv[1])));
    });
    head.appendChild(el("tr", null, el("td", null, "outcome"), el("td", null, okSpan(traj.ok))));
    if (traj.err) head.appendChild(el("tr", null, el("td", null, "error"), el("td", "bad", traj.err)));
    d.appendChild(head);
    if (traj.request) { d.appendChild(el("div", "lbl", "user request")); d.appendChild(el("pre", null, traj.request)); }
    if (!traj.steps.length) d.appendChild(el("div", "note", "no steps"));
    traj.steps.forEach(function (s, i) { d.appendChild(stepBlock(traj, s, i)); });
    return d;
  }

  // ------------------------------------------------------------------ the browser
  function distinct(list) { return list.filter(function (v, i, a) { return a.indexOf(v) === i; }); }

  function option(sel, value, label) { var o = el("option", null, label); o.value = value; sel.appendChild(o); }

  function Browser(root, run) {
    this.run = run; this.page = 0; this.open = {};
    var self = this, trajs = run.trajs;
    var bar = el("div", "filters");
    this.task = el("input"); this.task.id = "f-task"; this.task.placeholder = "task id contains\u2026";
    this.task.setAttribute("list", "f-task-list");
    var dl = el("datalist"); dl.id = "f-task-list";
    distinct(trajs.map(function (t) { return t.task; })).sort().slice(0, 2000).forEach(function (t) { option(dl, t, t); });
    this.ok = el("select"); this.ok.id = "f-ok";
    [["", "any"], ["1", "success"], ["0", "failure"]].forEach(function (o) { option(self.ok, o[0], o[1]); });
    this.tgt = el("select"); this.tgt.id = "f-target";
    [["", "any"], ["1", "with learner targets"], ["0", "without targets"]].forEach(function (o) { option(self.tgt, o[0], o[1]); });
    this.phase = el("select"); this.phase.id = "f-phase";
    option(this.phase, "", "any");
    distinct(trajs.map(function (t) { return t.phase; })).filter(function (p) { return p !== null; }).sort().forEach(function (p) { option(self.phase, p, p); });
    this.update = el("select"); this.update.id = "f-update";
    option(this.update, "", "any");
    distinct(trajs.map(function (t) { return t.update; })).filter(function (u) { return u !== null; })
      .sort(function (a, b) { return a - b; }).forEach(function (u) { option(self.update, String(u), String(u)); });
    this.count = el("span", "count"); this.count.id = "f-count";
    bar.appendChild(el("label", null, "task ", this.task)); bar.appendChild(dl);
    bar.appendChild(el("label", null, "outcome ", this.ok));
    bar.appendChild(el("label", null, "learner target ", this.tgt));
    bar.appendChild(el("label", null, "phase ", this.phase));
    bar.appendChild(el("label", null, "update ", this.update));
    bar.appendChild(this.count);
    root.appendChild(bar);
    this.table = el("table", "list"); this.table.id = "traj-list";
    var hr = el("tr");
    ["#", "task", "update", "phase", "outcome", "reward", "steps", "targets", "error"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
    this.table.appendChild(el("thead", null, hr));
    this.body = el("tbody"); this.table.appendChild(this.body);
    root.appendChild(this.table);
    this.pager = el("div", "pager");
    root.appendChild(this.pager);
    [this.task, this.ok, this.tgt, this.phase, this.update].forEach(function (c) {
      c.addEventListener(c === self.task ? "input" : "change", function () { self.page = 0; self.render(); });
    });
    this.render();
  }
  Browser.prototype.filtered = function () {
    var q = this.task.value.trim(), ok = this.ok.value, tg = this.tgt.value, ph = this.phase.value, up = this.update.value;
    return this.run.trajs.filter(function (t) {
      return (!q || t.task.indexOf(q) >= 0) && (ok === "" || (ok === "1") === t.ok) &&
             (tg === "" || (tg === "1") === (t.tgt.length > 0)) && (ph === "" || t.phase === ph) &&
             (up === "" || String(t.update) === up);
    });
  };
  Browser.prototype.render = function () {
    var self = this, rows = this.filtered(), pages = Math.max(1, Math.ceil(rows.length / PAGE));
    this.page = Math.min(this.page, pages - 1);
    var shown = rows.slice(this.page * PAGE, (this.page + 1) * PAGE);
    this.count.textContent = rows.length + " of " + this.run.trajs.length + " trajectories";
    this.body.textContent = "";
    shown.forEach(function (t) {
      var tr = el("tr", "traj-row", el("td", null, t.i), el("td", null, t.task), el("td", null, fmt(t.update)),
                  el("td", null, fmt(t.phase)), el("td", null, okSpan(t.ok)), el("td", null, fmt(t.r)),
                  el("td", null, t.n), el("td", null, t.tgt.length || ""), el("td", "bad", t.err ? t.err.slice(0, 60) : ""));
      tr.dataset.traj = String(t.i); tr.dataset.task = t.task;
      self.body.appendChild(tr);
      var holder = el("tr", "detail-row"), td = el("td"); td.colSpan = 9; holder.appendChild(td);
      holder.hidden = true;
      self.body.appendChild(holder);
      function toggle() {
        if (!holder.hidden) { holder.hidden = true; tr.classList.remove("open"); delete self.open[t.i]; return; }
        if (!td.firstChild) td.appendChild(trajectoryDetail(self.run, t));  // rendered on first open only
        holder.hidden = false; tr.classList.add("open"); self.open[t.i] = true;
      }
      tr.addEventListener("click", toggle);
      if (self.open[t.i]) toggle();
    });
    this.pager.textContent = "";
    var prev = el("button", null, "\u2190 previous"), next = el("button", null, "next \u2192");
    prev.disabled = this.page === 0; next.disabled = this.page >= pages - 1;
    prev.id = "page-prev"; next.id = "page-next";
    prev.addEventListener("click", function () { self.page--; self.render(); });
    next.addEventListener("click", function () { self.page++; self.render(); });
    this.pager.appendChild(prev);
    this.pager.appendChild(el("span", null, "page " + (this.page + 1) + " of " + pages));
    this.pager.appendChild(next);
  };

  // ------------------------------------------------------------------ two runs side by side
  function groupByTask(run) {
    var m = {};
    run.trajs.forEach(function (t) { (m[t.task] = m[t.task] || []).push(t); });
    return m;
  }
  function rate(list) { return list.filter(function (t) { return t.ok; }).length / list.length; }

  function Compare(root, a, b) {
    var ga = groupByTask(a), gb = groupByTask(b), self = this;
    this.tasks = Object.keys(ga).filter(function (k) { return gb[k]; }).sort();
    this.ga = ga; this.gb = gb; this.a = a; this.b = b; this.page = 0;
    root.appendChild(el("p", "note", this.tasks.length + " tasks appear in both runs; click one to see its trajectories side by side."));
    var bar = el("div", "filters");
    this.onlyDiff = el("input"); this.onlyDiff.type = "checkbox"; this.onlyDiff.id = "c-diff";
    bar.appendChild(el("label", null, this.onlyDiff, " only tasks whose success rate differs"));
    this.count = el("span", "count"); this.count.id = "c-count"; bar.appendChild(this.count);
    root.appendChild(bar);
    var t = el("table", "list"); t.id = "cmp-list";
    var hr = el("tr");
    ["task", a.name + ": episodes", "success", "mean reward", b.name + ": episodes", "success", "mean reward"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
    t.appendChild(el("thead", null, hr));
    this.body = el("tbody"); t.appendChild(this.body); root.appendChild(t);
    this.pager = el("div", "pager"); root.appendChild(this.pager);
    this.side = el("div", "side"); this.side.id = "cmp-side"; root.appendChild(this.side);
    this.onlyDiff.addEventListener("change", function () { self.page = 0; self.render(); });
    this.render();
  }
  Compare.prototype.render = function () {
    var self = this;
    var tasks = this.tasks.filter(function (k) { return !self.onlyDiff.checked || rate(self.ga[k]) !== rate(self.gb[k]); });
    var pages = Math.max(1, Math.ceil(tasks.length / PAGE));
    this.page = Math.min(this.page, pages - 1);
    this.count.textContent = tasks.length + " of " + this.tasks.length + " shared tasks";
    this.body.textContent = "";
    function mean(l) { return l.reduce(function (s, t) { return s + (t.r || 0); }, 0) / l.length; }
    tasks.slice(this.page * PAGE, (this.page + 1) * PAGE).forEach(function (k) {
      var A = self.ga[k], B = self.gb[k];
      var tr = el("tr", "cmp-row", el("td", null, k), el("td", null, A.length), el("td", null, fmt(rate(A))), el("td", null, fmt(mean(A))),
                  el("td", null, B.length), el("td", null, fmt(rate(B))), el("td", null, fmt(mean(B))));
      tr.dataset.task = k;
      tr.addEventListener("click", function () { self.show(k); });
      self.body.appendChild(tr);
    });
    this.pager.textContent = "";
    var prev = el("button", null, "\u2190 previous"), next = el("button", null, "next \u2192");
    prev.disabled = this.page === 0; next.disabled = this.page >= pages - 1;
    prev.addEventListener("click", function () { self.page--; self.render(); });
    next.addEventListener("click", function () { self.page++; self.render(); });
    this.pager.appendChild(prev); this.pager.appendChild(el("span", null, "page " + (this.page + 1) + " of " + pages)); this.pager.appendChild(next);
  };
  Compare.prototype.show = function (task) {
    var self = this;
    this.side.textContent = "";
    [[this.a, this.ga[task]], [this.b, this.gb[task]]].forEach(function (pair) {
      var col = el("div"), sel = el("select"), holder = el("div");
      col.dataset.run = pair[0].name;
      pair[1].forEach(function (t, i) {
        option(sel, String(i), "#" + t.i + " \u00b7 update " + fmt(t.update) + " \u00b7 " + fmt(t.phase) + " \u00b7 " + (t.ok ? "success" : "failure"));
      });
      function draw() { holder.textContent = ""; holder.appendChild(trajectoryDetail(pair[0], pair[1][Number(sel.value)])); }
      sel.addEventListener("change", draw);
      col.appendChild(el("h3", null, pair[0].name + " on " + task));
      col.appendChild(sel); col.appendChild(holder);
      self.side.appendChild(col);
      draw();
    });
    this.side.scrollIntoView();
  };

  // ------------------------------------------------------------------ start
  var root = document.getElementById("browser");
  var tabs = document.getElementById("browser-tabs"), current = null;
  function pick(i) {
    root.textContent = "";
    current = new Browser(root, RUNS[i]);
    Array.prototype.forEach.call(tabs.children, function (b, j) { b.className = i === j ? "on" : ""; });
  }
  if (RUNS.length > 1) {
    RUNS.forEach(function (r, i) {
      var b = el("button", null, r.name); b.id = "tab-" + i;
      b.addEventListener("click", function () { pick(i); });
      tabs.appendChild(b);
    });
    new Compare(document.getElementById("compare"), RUNS[0], RUNS[1]);
  }
  pick(0);
  document.body.dataset.ready = "1";
})();
"""
