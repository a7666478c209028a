// shoal dashboard: draws the snapshots and patches the server pushes
// (/events, server-sent events). Every value from the server is put in the
// page as text (textContent), never as HTML: job names and logs come from
// job code. Patches are applied as shoal.web.events.apply_patch does.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const csrf = body.dataset.csrf;
  const allowed = new Set((body.dataset.allowed || "").split(" ").filter(Boolean));
  const state = {};

  // -- small helpers ----------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function applyPatch(old, patch) {
    const out = Object.assign({}, old || {});
    for (const key of patch.remove || []) delete out[key];
    Object.assign(out, patch.set || {});
    for (const [key, items] of Object.entries(patch.append || {})) {
      out[key] = (out[key] || []).concat(items);
    }
    return out;
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.round(s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function num(v) {
    return typeof v === "number" ? (Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(4)) : String(v);
  }

  function badge(status) {
    let kind = "";
    if (status === "FINISHED:COMPLETED") kind = "ok";
    else if (status === "RUNNING" || status === "DISPATCHED") kind = "run";
    else if (status === "FINISHED:ABORTED") kind = "warn";
    else if (status && status.startsWith("FINISHED:")) kind = "bad";
    return el("span", { class: "badge " + kind, "data-status": status }, status || "?");
  }

  function jobLink(id, text) {
    return el("a", { href: "/jobs/" + encodeURIComponent(id) }, text || id.slice(0, 8));
  }

  function message(text, bad) {
    const box = document.getElementById("messages");
    box.replaceChildren(el("p", { class: bad ? "bad" : "" }, text));
  }

  function showError(data) {
    const banner = document.getElementById("error");
    if (data && data.error) {
      banner.textContent = "Could not read from the server: " + data.error;
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  // -- actions ----------------------------------------------------------------

  async function post(url, form) {
    const response = await fetch(url, {
      method: "POST",
      body: form || new FormData(),
      headers: { "X-CSRF-Token": csrf },
      credentials: "same-origin",
    });
    return response;
  }

  async function action(command, jobId) {
    if (command === "delete_job" && !window.confirm("Delete job " + jobId + " and its results?")) return;
    message(command.replace("_job", "") + " " + jobId.slice(0, 8) + "…", false);
    const response = await post("/actions/" + command + "/" + encodeURIComponent(jobId));
    const type = response.headers.get("content-type") || "";
    if (response.ok && type.startsWith("application/zip")) {
      const blob = await response.blob();
      const link = el("a", { href: URL.createObjectURL(blob), download: jobId + ".zip" });
      document.body.append(link);
      link.click();
      link.remove();
      message("Downloaded the results of job " + jobId + " (also kept in the kit's transfer/ folder).", false);
      return;
    }
    const answer = await response.json();
    message(answer.message, !answer.ok);
    if (answer.ok && command === "clone_job" && answer.job_id) {
      window.location.assign("/jobs/" + encodeURIComponent(answer.job_id));
    } else if (answer.ok && command === "delete_job") {
      window.location.assign("/jobs");
    }
  }

  function wireSubmit() {
    const form = document.getElementById("submit-form");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      message("Submitting…", false);
      try {
        const response = await post(form.action, new FormData(form));
        const answer = await response.json();
        message(answer.message, !answer.ok);
        if (answer.ok && answer.job_id) {
          window.location.assign("/jobs/" + encodeURIComponent(answer.job_id));
        }
      } finally {
        button.disabled = false;
      }
    });
  }

  // -- federation ---------------------------------------------------------------

  function resources(info) {
    if (!info) return "–";
    if (info.unavailable) return info.unavailable;
    const parts = [];
    if (info.cpus) parts.push(info.cpus + " CPUs");
    if (info.memory_gb) parts.push(info.memory_gb.toFixed(1) + " GiB");
    const res = info.resources || {};
    if (res.num_gpus !== undefined) parts.push(res.num_gpus + " GPUs");
    if (info.python) parts.push("Python " + info.python);
    return parts.join(", ") || "–";
  }

  function renderFederation(data) {
    const s = data.server || {};
    const facts = [
      ["Name", s.name], ["Project", s.project], ["Status", s.status], ["shoal", s.version],
      ["Started", when(s.start_time)], ["Uptime", duration(s.uptime_s)],
      ["Certificate expires", when(s.cert_not_after)],
      ["Running jobs", (s.running_jobs || []).length],
    ];
    document.getElementById("server").replaceChildren(
      ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === undefined || v === null ? "–" : v)])
    );
    const rows = (data.sites || []).map((site) => {
      const info = site.sys_info || {};
      const jobs = el("td", {});
      for (const id of site.running_jobs || []) jobs.append(jobLink(id), " ");
      if (!jobs.childNodes.length) jobs.append("–");
      return el("tr", { "data-site": site.name },
        el("th", { scope: "row" }, site.name),
        el("td", {}, site.org || "–"),
        el("td", {}, site.connected ? el("span", { class: "badge ok" }, "connected") : el("span", { class: "badge bad" }, "offline")),
        el("td", {}, when(site.connected_since)),
        el("td", {}, site.last_heartbeat_s_ago === null || site.last_heartbeat_s_ago === undefined ? "–" : site.last_heartbeat_s_ago.toFixed(1) + " s ago"),
        el("td", {}, site.shoal_version || info.shoal || "–"),
        el("td", {}, site.connected ? resources(info) : "–"),
        el("td", {}, when(site.cert_not_after)),
        jobs);
    });
    replaceRows(document.querySelector("#sites tbody"), rows);
  }

  // -- jobs ---------------------------------------------------------------------

  function renderJobs(data) {
    const text = document.getElementById("filter-text").value.trim().toLowerCase();
    const status = document.getElementById("filter-status").value;
    const shown = (data.jobs || []).filter((j) =>
      (!status || j.status === status) &&
      (!text || j.name.toLowerCase().includes(text) || j.job_id.startsWith(text)));
    const rows = shown.map((j) => el("tr", { "data-job": j.job_id },
      el("th", { scope: "row" }, jobLink(j.job_id, j.name)),
      el("td", {}, el("code", {}, j.job_id.slice(0, 8))),
      el("td", {}, badge(j.status)),
      el("td", {}, j.current_round === null || j.current_round === undefined ? "–" : j.current_round + (j.num_rounds ? " / " + j.num_rounds : "")),
      el("td", {}, when(j.submit_time)),
      el("td", {}, duration(j.run_duration_s)),
      el("td", {}, j.submitter || "–"),
      el("td", {}, (j.sites || []).join(", ") || "–")));
    replaceRows(document.querySelector("#jobs tbody"), rows);
    document.getElementById("jobs-empty").hidden = rows.length > 0;
  }

  // -- one job ------------------------------------------------------------------

  const charts = new Map();
  const PALETTE = ["#0b57a4", "#b45309", "#15803d", "#9b1c1c", "#6d28d9", "#0e7490", "#4d4d4d"];

  function chart(id, title, unit, rounds, series) {
    // series: [[label, values]]; one figure per metric, redrawn in place.
    const container = document.getElementById("charts");
    let entry = charts.get(id);
    const key = series.map((s) => s[0]).join("|");
    if (!entry || entry.key !== key) {
      if (entry) { entry.plot.destroy(); entry.figure.remove(); }
      const area = el("div", { role: "img", "aria-label": title + " per round: " + series.map((s) => s[0]).join(", ") });
      const figure = el("figure", { class: "chart", id: "chart-" + id }, el("figcaption", {}, title), area);
      container.append(figure);
      const width = Math.max(320, Math.min(560, container.clientWidth - 24));
      const opts = {
        width: width, height: 220,
        scales: { x: { time: false } },
        // Rounds are whole numbers: ticks only at whole steps.
        axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, { label: unit || "" }],
        series: [{ label: "round" }].concat(series.map((s, i) => ({
          label: s[0], stroke: PALETTE[i % PALETTE.length], width: 2, points: { size: 6 },
        }))),
      };
      const plot = new uPlot(opts, [rounds].concat(series.map((s) => s[1])), area);
      entry = { plot: plot, key: key, figure: figure };
      charts.set(id, entry);
    } else {
      entry.plot.setData([rounds].concat(series.map((s) => s[1])));
    }
    entry.figure.dataset.rounds = String(rounds.length);
  }

  function metricSeries(rows) {
    // metric name -> [[label, values per round]]: global (server), aggregated, each site.
    const out = new Map();
    function add(metric, label, index, value) {
      if (typeof value !== "number") return;
      if (!out.has(metric)) out.set(metric, new Map());
      const byLabel = out.get(metric);
      if (!byLabel.has(label)) byLabel.set(label, rows.map(() => null));
      byLabel.get(label)[index] = value;
    }
    rows.forEach((row, i) => {
      for (const [m, v] of Object.entries(row.server || {})) add(m, "global", i, v);
      for (const [m, v] of Object.entries(row.aggregated || {})) add(m, "sites (weighted)", i, v);
      for (const [site, metrics] of Object.entries(row.sites || {})) {
        for (const [m, v] of Object.entries(metrics || {})) add(m, site, i, v);
      }
    });
    return out;
  }

  function renderCharts(rows) {
    document.getElementById("no-rounds").hidden = rows.length > 0;
    if (!rows.length || typeof uPlot === "undefined") return;
    const rounds = rows.map((r) => r.round);
    for (const [metric, byLabel] of metricSeries(rows)) {
      chart("m-" + metric.replace(/[^A-Za-z0-9_-]/g, "_"), metric, "", rounds, Array.from(byLabel.entries()));
    }
    chart("duration", "Round duration", "seconds", rounds, [["duration (s)", rows.map((r) => r.duration_s ?? null)]]);
    if (rows.some((r) => typeof r.bytes_sent === "number")) {
      // One unit for the chart, the largest that keeps its values >= 1.
      const most = Math.max(...rows.map((r) => Math.max(r.bytes_sent || 0, r.bytes_received || 0)));
      let unit = 0;
      while (unit < 4 && most >= Math.pow(1024, unit + 1)) unit += 1;
      const name = ["B", "KB", "MB", "GB", "TB"][unit];
      const scaled = (key) => rows.map((r) => (typeof r[key] === "number" ? r[key] / Math.pow(1024, unit) : null));
      chart("bytes", "Bytes moved", name, rounds, [
        ["sent to sites (" + name + ")", scaled("bytes_sent")],
        ["received from sites (" + name + ")", scaled("bytes_received")],
      ]);
    }
  }

  function renderRounds(rows) {
    const tableRows = rows.slice().reverse().map((r) => el("tr", {},
      el("th", { scope: "row" }, r.round),
      el("td", {}, duration(r.duration_s)),
      el("td", {}, r.num_examples ?? "–"),
      el("td", {}, Object.keys(r.sites || {}).sort().join(", ") || "–"),
      el("td", {}, (r.missing || []).join(", ") || "none"),
      el("td", {}, bytes(r.bytes_sent)),
      el("td", {}, bytes(r.bytes_received))));
    replaceRows(document.querySelector("#rounds tbody"), tableRows);
  }

  // ColorBrewer "Blues", light (low) to dark (high).
  const HEAT = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"];
  const HEAT_DARK_FROM = 6;

  function renderMatrix(matrix) {
    const section = document.getElementById("matrix-section");
    if (!matrix || !matrix.models) { section.hidden = true; return; }
    section.hidden = false;
    const select = document.getElementById("matrix-metric");
    const names = [];
    for (const row of Object.values(matrix.results || {})) {
      for (const cell of Object.values(row)) {
        for (const m of Object.keys((cell && cell.metrics) || {})) if (!names.includes(m)) names.push(m);
      }
    }
    const current = select.value || names[0];
    select.replaceChildren(...names.map((m) => el("option", { value: m, selected: m === current }, m)));
    const metric = select.value;
    const values = [];
    for (const row of Object.values(matrix.results || {})) {
      for (const cell of Object.values(row)) {
        const v = cell && cell.metrics && cell.metrics[metric];
        if (typeof v === "number") values.push(v);
      }
    }
    const lo = Math.min(...values), hi = Math.max(...values);
    const head = el("tr", {}, el("th", { scope: "col" }, "model \u2193 / evaluated at \u2192"),
      ...matrix.sites.map((s) => el("th", { scope: "col" }, s)));
    const rows = matrix.models.map((model) => el("tr", {}, el("th", { scope: "row" }, model),
      ...matrix.sites.map((site) => {
        const cell = ((matrix.results || {})[model] || {})[site];
        const v = cell && cell.metrics ? cell.metrics[metric] : undefined;
        if (typeof v !== "number") {
          const why = ((matrix.missing || {})[model] || {})[site];
          return el("td", { title: why || "" }, why ? "missing" : "–");
        }
        const t = hi > lo ? (v - lo) / (hi - lo) : 1;
        const step = Math.min(HEAT.length - 1, Math.floor(t * HEAT.length));
        const td = el("td", { "data-step": step }, num(v));
        td.style.backgroundColor = HEAT[step];
        // Dark text on the light blues, white on the dark: at least 5:1 each.
        td.style.color = step >= HEAT_DARK_FROM ? "#ffffff" : "#1a1a1a";
        return td;
      })));
    document.getElementById("matrix").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  }

  function renderLogs(data) {
    const box = document.getElementById("logs");
    const open = new Set(Array.from(box.querySelectorAll("details[open]")).map((d) => d.dataset.target));
    const parts = Object.entries(data.logs || {}).map(([target, text]) =>
      el("details", { "data-target": target, open: open.has(target) || target === "server" },
        el("summary", {}, target), el("pre", { class: "log", tabindex: "0" }, text)));
    for (const [target, why] of Object.entries(data.log_errors || {})) {
      parts.push(el("p", { class: "note" }, target + ": " + why));
    }
    box.replaceChildren(...parts);
    // A tail is read from its end.
    for (const pre of box.querySelectorAll("pre")) pre.scrollTop = pre.scrollHeight;
  }

  function renderJob(data) {
    const meta = data.meta || {};
    const stats = data.stats || {};
    const rows = stats.metrics || [];
    document.getElementById("job-name").textContent = meta.name || body.dataset.job.slice(0, 8);
    document.getElementById("job-status").replaceWith(Object.assign(badge(meta.status), { id: "job-status" }));
    const facts = [
      ["Job id", meta.job_id], ["Workflow", data.workflow], ["Submitter", meta.submitter],
      ["Submitted", when(meta.submit_time)], ["Started", when(meta.start_time)],
      ["Ended", when(meta.end_time)], ["Run time", duration(meta.run_duration_s)],
      ["Sites", (meta.sites || []).join(", ")], ["Error", meta.error],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "" && v !== "–");
    document.getElementById("job-facts").replaceChildren(
      ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    for (const button of document.querySelectorAll("[data-action]")) {
      const command = button.dataset.action;
      button.disabled = (command === "abort_job" && data.finished) || (command === "delete_job" && !data.finished);
    }
    const total = stats.num_rounds || meta.num_rounds || 0;
    const progress = document.getElementById("round-progress");
    progress.max = Math.max(total, 1);
    progress.value = Math.min(rows.length, progress.max);
    document.getElementById("round-text").textContent =
      rows.length + " of " + (total || "?") + " rounds" + (stats.current_round ? ", now in round " + stats.current_round : "");
    const siteRows = Object.entries(stats.sites || {}).sort().map(([site, s]) => el("tr", {},
      el("th", { scope: "row" }, site), el("td", {}, s.state), el("td", {}, s.round ?? "–"),
      el("td", {}, Object.entries(s.metrics || {}).map(([k, v]) => k + " " + num(v)).join(", ") || "–")));
    if (!siteRows.length) {
      siteRows.push(el("tr", {}, el("td", { colspan: 4 }, data.finished ? "The job has ended." : "No site has a task yet.")));
    }
    replaceRows(document.querySelector("#site-states tbody"), siteRows);
    if (data.stats_error) message(data.stats_error, true);
    renderCharts(rows);
    renderRounds(rows);
    renderMatrix(stats.cross_site_eval);
    renderLogs(data);
  }

  // -- wiring ---------------------------------------------------------------------

  const renderers = { federation: renderFederation, jobs: renderJobs };

  function render(topic) {
    const data = state[topic];
    showError(data);
    if (topic.startsWith("job:")) renderJob(data);
    else if (renderers[topic]) renderers[topic](data);
  }

  function connect() {
    const topics = (body.dataset.topics || "").split(" ").filter(Boolean);
    const query = topics.map((t) => "topic=" + encodeURIComponent(t)).join("&");
    const live = document.getElementById("live");
    const source = new EventSource("/events?" + query);
    source.addEventListener("open", () => { live.textContent = "live"; });
    source.addEventListener("error", () => { live.textContent = "reconnecting…"; });
    source.addEventListener("snapshot", (event) => {
      const msg = JSON.parse(event.data);
      state[msg.topic] = msg.data;
      render(msg.topic);
    });
    source.addEventListener("patch", (event) => {
      const msg = JSON.parse(event.data);
      state[msg.topic] = applyPatch(state[msg.topic], msg.patch);
      render(msg.topic);
    });
  }

  if (page === "jobs") {
    wireSubmit();
    for (const id of ["filter-text", "filter-status"]) {
      document.getElementById(id).addEventListener("input", () => state.jobs && renderJobs(state.jobs));
    }
  }
  if (page === "job") {
    for (const button of document.querySelectorAll("[data-action]")) {
      if (!allowed.has(button.dataset.action)) button.disabled = true;
      button.addEventListener("click", () => action(button.dataset.action, state["job:" + body.dataset.job]?.meta?.job_id || body.dataset.job));
    }
    document.getElementById("matrix-metric").addEventListener("change", () => {
      const data = state["job:" + body.dataset.job];
      if (data) renderMatrix((data.stats || {}).cross_site_eval);
    });
  }
  connect();
})();
