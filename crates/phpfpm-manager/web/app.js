// phpfpm-manager's page: the overview of every pool, one pool in depth, the
// autoscaler's reasoning and the events timeline, drawn from the REST API
// under /api/v1 and updated by polling at the pools' collection interval.
//
// Rules this file keeps:
// - every request goes through api(), which adds the API key kept in this
//   tab's session storage and asks for one when the manager answers 401;
// - everything that comes from the API is inserted as text (text nodes and
//   textContent), never as HTML;
// - nothing is loaded from anywhere but the manager (the page's
//   Content-Security-Policy enforces it too).
"use strict";

(function () {
  const KEY_STORE = "phpfpm-manager.api-key";
  /** Bounds of the polling interval, whatever the pools' intervals are. */
  const POLL_MIN_MS = 1000;
  const POLL_MAX_MS = 5000;
  /** History charts are redrawn at most this often. */
  const CHART_REFRESH_MS = { hour: 15000, day: 60000, week: 300000 };
  /** The overview's small charts (two short queries per pool). */
  const SPARK_REFRESH_MS = 5000;
  const RANGES = {
    hour: { from: "now-1h", label: "Last hour" },
    day: { from: "now-24h", label: "Last day" },
    week: { from: "now-7d", label: "Last week" },
  };
  const SEVERITIES = ["info", "warning", "error", "critical"];

  // ---------------------------------------------------------------- API

  /** The manager asked for a key; the request may be retried with one. */
  class AuthNeeded extends Error {}

  /** An error answer of the API, with its stable code. */
  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /**
   * The API key of this tab: in sessionStorage only (never localStorage, a
   * cookie or an address), so it is gone when the tab closes. A browser
   * that refuses storage keeps it in this page's memory instead.
   */
  let keyInMemory = null;

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORE);
    } catch (e) {
      return keyInMemory;
    }
  }

  function storeKey(key) {
    keyInMemory = null;
    try {
      if (key) {
        sessionStorage.setItem(KEY_STORE, key);
      } else {
        sessionStorage.removeItem(KEY_STORE);
      }
    } catch (e) {
      keyInMemory = key || null;
    }
  }

  /** GET `path` from the manager's API as JSON. The only place that fetches. */
  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = readKey();
    if (key) {
      headers.Authorization = "Bearer " + key;
    }
    const res = await fetch(path, {
      headers: headers,
      cache: "no-store",
      credentials: "same-origin",
      redirect: "error",
    });
    if (res.status === 401) {
      // Only the answer to the key in use now counts: a request sent before
      // a new key was entered must not ask again. A refused key is dropped,
      // so the same wrong key is not sent again.
      if (readKey() === key) {
        if (key) {
          storeKey(null);
        }
        askForKey(!!key);
      }
      throw new AuthNeeded("an API key is needed");
    }
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      body = null;
    }
    if (!res.ok) {
      const err = body && body.error ? body.error : {};
      throw new ApiFailure(res.status, err.code || "http_" + res.status, err.message || res.statusText);
    }
    return body;
  }

  // -------------------------------------------------------------- DOM

  /**
   * An element with attributes and children. Strings and numbers become
   * text nodes: API data never reaches an HTML parser.
   */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) {
          continue;
        }
        if (k === "text") {
          el.textContent = String(v);
        } else if (k.startsWith("on")) {
          el.addEventListener(k.slice(2), v);
        } else {
          el.setAttribute(k, v === true ? "" : String(v));
        }
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) {
        continue;
      }
      if (Array.isArray(c)) {
        append(el, c);
      } else if (c instanceof Node) {
        el.appendChild(c);
      } else {
        el.appendChild(document.createTextNode(String(c)));
      }
    }
  }

  /** Replaces an element's children. */
  function fill(el, ...children) {
    el.replaceChildren();
    append(el, children);
    return el;
  }

  /** Sets text only when it changed, so screen readers and selections rest. */
  function setText(el, text) {
    const t = String(text);
    if (el.textContent !== t) {
      el.textContent = t;
    }
  }

  /** A link to a page view; the pool name is encoded, never interpreted. */
  function poolHref(name) {
    return "#/pools/" + encodeURIComponent(name);
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // ------------------------------------------------------- formatting

  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) {
      return "–";
    }
    const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    return Number(v).toLocaleString("en", { maximumFractionDigits: d, minimumFractionDigits: 0 });
  }

  function bytes(v) {
    if (v === null || v === undefined) {
      return "–";
    }
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let x = Number(v);
    let i = 0;
    while (Math.abs(x) >= 1024 && i < units.length - 1) {
      x /= 1024;
      i += 1;
    }
    return num(x, x >= 100 ? 0 : 1) + " " + units[i];
  }

  function pct(v) {
    return v === null || v === undefined ? "–" : num(v * 100, v >= 0.995 && v < 1 ? 1 : 0) + " %";
  }

  function seconds(s) {
    if (s === null || s === undefined) {
      return "–";
    }
    if (s < 1) {
      return num(s * 1000, 0) + " ms";
    }
    return num(s, 2) + " s";
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  function when(ms) {
    const d = new Date(ms);
    const today = new Date();
    return d.toDateString() === today.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) {
      return s + " s ago";
    }
    if (s < 3600) {
      return Math.round(s / 60) + " min ago";
    }
    if (s < 86400) {
      return Math.round(s / 3600) + " h ago";
    }
    return Math.round(s / 86400) + " d ago";
  }

  /** Event details as short "key: value" text (values as JSON text). */
  function detailsText(details) {
    if (!details || typeof details !== "object") {
      return "";
    }
    return Object.entries(details)
      .filter(([k, v]) => v !== null && v !== undefined && k !== "summary")
      .map(([k, v]) => k + ": " + (typeof v === "string" ? v : JSON.stringify(v)))
      .join("; ");
  }

  // ------------------------------------------------------ pool figures

  /** One word for where a pool stands, from /api/v1/pools. */
  function poolState(p) {
    if (p.master && p.master.failed) {
      return "failed";
    }
    if (p.stalled) {
      return "stalled";
    }
    if (!p.supervised) {
      return p.up ? "observed" : "down";
    }
    if (p.master && p.master.running && p.up) {
      return "running";
    }
    return "starting";
  }

  function stateWhy(p) {
    if (p.master && p.master.failed) {
      return p.master.failed;
    }
    if (p.stalled) {
      return "php-fpm master " + p.stalled.pid + " is stalled (" + p.stalled.reason + ")";
    }
    if (p.last_error) {
      return p.last_error.kind + ": " + p.last_error.message;
    }
    return "";
  }

  function queueText(p) {
    const k = p.kernel || {};
    if (k.accept_queue === null || k.accept_queue === undefined) {
      return "–";
    }
    return String(k.accept_queue);
  }

  function opcacheText(o) {
    if (o === null || o === undefined) {
      return { text: "off", title: "monitoring.enable_opcache is off" };
    }
    if (o.error) {
      return { text: o.error, title: o.message };
    }
    return { text: pct(o.hit_rate) + " hits · " + pct(o.fill) + " full", title: (o.cached_scripts || 0) + " scripts cached" };
  }

  /**
   * The autoscaler's rules (the `rule` of /scale and of a decision) in
   * words. A rule not listed here is shown by its name.
   */
  const RULE_WORDS = {
    observed: "the pool is observed, not run by the manager",
    unknown_pool: "the pool is not yet among those sharing the budget",
    not_autoscaled: "autoscaling is off for this pool",
    fixed: "the pool's size is fixed",
    pinned: "an operator pinned the size",
    paused: "an operator paused autoscaling",
    hold: "nothing calls for a change",
    no_budget: "no memory budget is known, so the size is left alone",
    refused_backing_off: "the last change was refused, so the same change waits before it is tried again",
    over_budget: "the pool's workers no longer fit in its share of the memory budget",
    waiting_for_memory: "it needs more workers, but other pools hold the memory",
    cooldown: "a change was made a short while ago",
    pressing_cap: "connections wait or every worker is busy, so the cap grows to the pool's share",
    share_grew: "its share of the memory budget grew",
    within_band: "the difference is too small to be worth a new master",
    needed_elsewhere: "another pool needs the memory this one holds beyond its share",
    share_shrank: "its share of the memory budget has been smaller for a while",
    stabilising: "its share is smaller, and it waits to see that this lasts",
    at_share: "the cap is the pool's share of the memory budget",
    trim_idle: "a new master sheds the idle workers kept well beyond the need",
  };

  function ruleText(rule, reason) {
    const words = RULE_WORDS[rule];
    const why = words ? "Why: " + words + " (rule " + rule + ")" : "Rule: " + rule;
    return why + (reason && reason !== rule ? "; the model says: " + reason : "") + ".";
  }

  /**
   * The autoscaler's view of a pool in sentences a person reads: what the
   * traffic needs, what memory and CPU allow, and the rule that decided.
   * Takes /api/v1/pools/{pool}/scale or a scale_decision event's details.
   */
  function explain(s) {
    if (!s) {
      return ["The autoscaler has not looked at this pool yet."];
    }
    const out = [];
    const rate = s.arrival_rate_per_s !== undefined ? s.arrival_rate_per_s : s.long_rate_per_s;
    const shortRate = s.short_rate_per_s;
    const rec = s.recommended_workers;
    if (s.mode === "advise") {
      out.push("The manager only advises on this pool: it is observed, or its autoscaling is off, so nothing is changed.");
    }
    if (s.override === "pinned") {
      out.push(
        "An operator pinned it at " + s.pinned_workers + " workers" +
          (s.pinned_until_ms ? " until " + when(s.pinned_until_ms) : "") +
          (s.override_reason ? " (" + s.override_reason + ")" : "") + "."
      );
    } else if (s.override === "paused") {
      out.push("Autoscaling is paused" + (s.override_reason ? " (" + s.override_reason + ")" : "") + ".");
    }
    if (s.phase === "learning") {
      out.push("Still learning the pool: confidence " + pct(s.confidence) + ".");
    } else if (s.confidence !== null && s.confidence !== undefined) {
      out.push("Confidence in the model: " + pct(s.confidence) + ".");
    }
    if (rec !== null && rec !== undefined && rate !== null && rate !== undefined && s.mean_service_s !== null && s.mean_service_s !== undefined) {
      out.push(
        "Needs " + rec + " workers for " + num(rate) + " req/s at " + seconds(s.mean_service_s) +
          " per request" +
          (s.offered_load !== null && s.offered_load !== undefined ? " (" + num(s.offered_load) + " busy on average, plus headroom)" : "") +
          "."
      );
    } else if (rec !== null && rec !== undefined) {
      out.push("Recommends " + rec + " workers.");
    } else if (rate !== null && rate !== undefined) {
      out.push("Sees " + num(rate) + " req/s; no request has finished yet to learn the service time from.");
    }
    if (shortRate !== null && shortRate !== undefined && rate !== null && rate !== undefined && Math.abs(shortRate - rate) > Math.max(0.5, rate * 0.5)) {
      out.push("Right now " + num(shortRate) + " req/s arrive.");
    }
    const pss = s.worker_pss_p95_bytes !== undefined ? s.worker_pss_p95_bytes : s.p95_pss_bytes;
    const memCeil = s.memory_ceiling_workers !== undefined ? s.memory_ceiling_workers : s.memory_ceiling;
    if (s.memory_budget_bytes !== null && s.memory_budget_bytes !== undefined && memCeil !== null && memCeil !== undefined) {
      out.push(
        "The memory budget of " + bytes(s.memory_budget_bytes) + " allows " + memCeil + " workers" +
          (pss ? " of " + bytes(pss) + " each (95th percentile)" : "") + "."
      );
    } else if (s.memory_budget_bytes) {
      out.push("The memory budget is " + bytes(s.memory_budget_bytes) + ".");
    }
    const cpuCeil = s.cpu_ceiling_workers !== undefined ? s.cpu_ceiling_workers : s.cpu_ceiling;
    if (cpuCeil !== null && cpuCeil !== undefined) {
      out.push("The CPU allows " + cpuCeil + " workers.");
    }
    if (s.cpu_bound) {
      out.push("The workers use all the CPU there is: more workers would not help.");
    }
    const applied = s.applied_workers;
    const planned = s.planned_workers !== undefined ? s.planned_workers : s.planned_cap;
    if (applied !== null && applied !== undefined) {
      let t = "Runs with a cap of " + applied + " workers";
      if (planned !== null && planned !== undefined && planned !== applied) {
        t += "; its share of the budget would be " + planned;
      }
      out.push(t + ".");
    }
    if (s.rule) {
      out.push(ruleText(s.rule, s.reason));
    }
    const err = s.last_error !== undefined ? s.last_error : s.error;
    if (err) {
      out.push("The last change was refused: " + err + ".");
    }
    return out;
  }

  // ------------------------------------------------------------ charts

  /** Points of every series of a history answer, keyed by time (s). */
  function pointsOf(answer) {
    const out = new Map();
    for (const s of (answer && answer.series) || []) {
      for (const p of s.points || []) {
        const t = Math.round(p.t_ms / 1000);
        out.set(t, (out.get(t) || 0) + p.value);
      }
    }
    return out;
  }

  /** The time window of a history answer, in seconds, for the x axis. */
  function windowOf(answer) {
    return answer && answer.from_ms && answer.to_ms ? [answer.from_ms / 1000, answer.to_ms / 1000] : null;
  }

  /** uPlot's columns from several series, aligned on the union of times. */
  function align(maps) {
    const times = new Set();
    for (const m of maps) {
      for (const t of m.keys()) {
        times.add(t);
      }
    }
    const xs = Array.from(times).sort((a, b) => a - b);
    const cols = [xs];
    for (const m of maps) {
      cols.push(xs.map((t) => (m.has(t) ? m.get(t) : null)));
    }
    return cols;
  }

  /** A uPlot hook drawing events as vertical marks at their time. */
  function markPlugin(getMarks) {
    return {
      hooks: {
        draw: [
          (u) => {
            const marks = getMarks();
            if (!marks.length) {
              return;
            }
            const ctx = u.ctx;
            const [min, max] = [u.scales.x.min, u.scales.x.max];
            ctx.save();
            ctx.strokeStyle = cssVar("--mark");
            ctx.lineWidth = Math.max(1, devicePixelRatio);
            ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
            for (const m of marks) {
              const t = m.ts_ms / 1000;
              if (t < min || t > max) {
                continue;
              }
              const x = Math.round(u.valToPos(t, "x", true));
              ctx.beginPath();
              ctx.moveTo(x, u.bbox.top);
              ctx.lineTo(x, u.bbox.top + u.bbox.height);
              ctx.stroke();
            }
            ctx.restore();
          },
        ],
      },
    };
  }

  /**
   * A uPlot chart in `host`, sized to it; `series` are {label, color,
   * format}. Returns {setData(cols), destroy()}.
   */
  function makeChart(host, opts) {
    let plot = null;
    let data = null;
    // The queried window in seconds: a chart of the last hour spans the
    // hour even while the history holds only a few minutes.
    let bounds = null;
    const build = () => {
      if (!data || typeof uPlot === "undefined") {
        return;
      }
      // Colours are read at each build: a change of theme rebuilds.
      const axisColor = cssVar("--muted");
      const grid = { stroke: cssVar("--grid"), width: 1 };
      // Sparklines have a fixed size: sized to their cell, they would
      // widen the cell they are sized to.
      const width = opts.spark ? 160 : Math.max(120, Math.floor(host.clientWidth || 300));
      const o = {
        width: width,
        height: opts.height,
        legend: { show: !opts.spark },
        cursor: { show: !opts.spark, points: { show: false } },
        scales: { x: { time: true, range: (u, lo, hi) => bounds || [lo, hi] }, y: { range: (u, lo, hi) => [Math.min(0, lo), Math.max(1, hi * 1.1)] } },
        axes: opts.spark
          ? [{ show: false }, { show: false }]
          : [
              { stroke: axisColor, grid: grid, ticks: grid },
              { stroke: axisColor, grid: grid, ticks: grid, size: 60, values: (u, vals) => vals.map(opts.format || ((v) => num(v))) },
            ],
        series: [{}].concat(
          opts.series.map((s) => ({
            label: s.label,
            stroke: cssVar(s.color),
            width: 1.5,
            spanGaps: false,
            points: { show: false },
            value: (u, v) => (v === null ? "–" : (opts.format || num)(v)),
          }))
        ),
        plugins: opts.marks ? [markPlugin(opts.marks)] : [],
      };
      if (opts.spark) {
        // Room for a line at zero, which a chart without axes would clip.
        o.padding = [3, 2, 3, 2];
      }
      if (plot) {
        plot.destroy();
      }
      host.replaceChildren();
      plot = new uPlot(o, data, host);
      const canvas = host.querySelector("canvas");
      if (canvas) {
        canvas.setAttribute("aria-hidden", "true");
      }
    };
    const observer = new ResizeObserver(() => {
      if (plot && !opts.spark && Math.abs(plot.width - host.clientWidth) > 8) {
        build();
      }
    });
    observer.observe(host);
    const scheme = window.matchMedia("(prefers-color-scheme: dark)");
    scheme.addEventListener("change", build);
    return {
      setData(cols, window) {
        data = cols;
        bounds = window || null;
        host.dataset.points = String(cols[0].length);
        if (plot && plot.series.length === cols.length) {
          plot.setData(cols);
        } else {
          build();
        }
      },
      redraw() {
        if (plot) {
          plot.redraw(false, false);
        }
      },
      destroy() {
        observer.disconnect();
        scheme.removeEventListener("change", build);
        if (plot) {
          plot.destroy();
        }
        plot = null;
      },
    };
  }

  async function metricHistory(pool, metric, from) {
    return api(
      "/api/v1/pools/" + encodeURIComponent(pool) + "/metrics?metric=" + encodeURIComponent(metric) + "&from=" + encodeURIComponent(from)
    );
  }

  // ---------------------------------------------------------- shared data

  /** What every view may need about the manager (storage on or off). */
  const manager = { status: null };

  async function loadStatus() {
    manager.status = await api("/api/v1/status");
    return manager.status;
  }

  function historyOn() {
    return !!(manager.status && manager.status.storage);
  }

  /** Poll interval: the shortest collection interval of the pools. */
  function intervalOf(pools) {
    let ms = POLL_MAX_MS;
    for (const p of pools) {
      if (p.collect_interval_ms > 0) {
        ms = Math.min(ms, p.collect_interval_ms);
      }
    }
    return Math.max(POLL_MIN_MS, Math.min(POLL_MAX_MS, ms));
  }

  // ------------------------------------------------------- overview view

  const POOL_COLUMNS = [
    ["Pool", null],
    ["State", null],
    ["Busy", "num"],
    ["Idle", "num"],
    ["Total", "num"],
    ["Accept queue", "num"],
    ["Requests/s", "num"],
    ["p95 request", "num"],
    ["Worker PSS / budget", null],
    ["OPcache", null],
    ["Recommended / applied", null],
    ["Last event", null],
    ["Last hour: busy and queue", null],
  ];

  function overviewView() {
    const rows = new Map();
    const sparks = new Map();
    let lastSparks = 0;
    const prevAccepted = new Map();
    const banner = h("div", { id: "reload-banner" });
    const tbody = h("tbody");
    const table = h(
      "table",
      { class: "cards", id: "pools" },
      h("caption", null, "Every pool, live"),
      h("thead", null, h("tr", null, POOL_COLUMNS.map(([name, cls]) => h("th", { scope: "col", class: cls }, name)))),
      tbody
    );
    const empty = h("p", { class: "note", hidden: true }, "No pools are configured.");
    const root = h(
      "section",
      { "aria-labelledby": "overview-title" },
      h("h1", { id: "overview-title", tabindex: "-1" }, "Overview"),
      banner,
      empty,
      h("div", { class: "table-wrap", role: "region", "aria-label": "Pools", tabindex: "0" }, table)
    );

    function row(name) {
      let r = rows.get(name);
      if (r) {
        return r;
      }
      const cell = (field, label, cls) => h("td", { "data-field": field, "data-label": label, class: cls });
      const link = h("a", { href: poolHref(name) }, name);
      const spark = h("div", { class: "spark chart", "data-field": "chart" });
      r = {
        tr: h("tr", { "data-pool": name }),
        state: cell("state", "State"),
        busy: cell("busy", "Busy", "num"),
        idle: cell("idle", "Idle", "num"),
        total: cell("total", "Total", "num"),
        queue: cell("queue", "Accept queue", "num"),
        rps: cell("rps", "Requests/s", "num"),
        p95: cell("p95", "p95 request", "num"),
        pss: cell("pss", "Worker PSS / budget"),
        opcache: cell("opcache", "OPcache"),
        size: cell("size", "Recommended / applied"),
        event: cell("last-event", "Last event", "msg"),
        sparkCell: h("td", { "data-label": "Last hour: busy and queue" }, spark),
        spark: spark,
      };
      append(r.tr, [
        h("th", { scope: "row", "data-label": "Pool", "data-field": "name" }, link),
        r.state,
        r.busy,
        r.idle,
        r.total,
        r.queue,
        r.rps,
        r.p95,
        r.pss,
        r.opcache,
        r.size,
        r.event,
        r.sparkCell,
      ]);
      rows.set(name, r);
      return r;
    }

    function render(pools, scaling, extra, events, status) {
      const byName = (list, key) => new Map((list || []).map((x) => [x[key], x]));
      const scale = byName(scaling && scaling.pools, "pool");
      const more = byName(extra && extra.pools, "pool");
      const lastEvent = new Map();
      for (const e of (events && events.events) || []) {
        // The autoscaler's "holds at N" decisions are routine: the last
        // event shown is the last that changed or reported something.
        const routine = e.type === "scale_decision" && e.details && e.details.to_workers === null && !e.details.error;
        if (e.pool && !routine && !lastEvent.has(e.pool)) {
          lastEvent.set(e.pool, e);
        }
      }
      const seen = new Set();
      const now = Date.now();
      for (const p of pools) {
        seen.add(p.name);
        const r = row(p.name);
        if (!r.tr.parentNode) {
          tbody.appendChild(r.tr);
        }
        const st = poolState(p);
        const why = stateWhy(p);
        fill(r.state, h("span", { class: "state-" + st, "data-state": st }, st), why ? h("span", { class: "sub" }, why) : null);
        const w = p.workers;
        setText(r.busy, w ? w.active : "–");
        setText(r.idle, w ? w.idle : "–");
        setText(r.total, w ? w.total : "–");
        const limit = p.kernel && p.kernel.accept_queue_limit;
        setText(r.queue, queueText(p));
        r.queue.title = p.kernel && p.kernel.accept_queue_error ? p.kernel.accept_queue_error : limit ? "backlog limit " + limit : "";
        const s = scale.get(p.name);
        let rate = s ? s.short_rate_per_s : null;
        if ((rate === null || rate === undefined) && p.accepted_connections !== null && p.accepted_connections !== undefined) {
          const prev = prevAccepted.get(p.name);
          if (prev && p.accepted_connections >= prev.n && now > prev.t) {
            rate = ((p.accepted_connections - prev.n) * 1000) / (now - prev.t);
          }
          prevAccepted.set(p.name, { n: p.accepted_connections, t: now });
        }
        setText(r.rps, num(rate));
        const x = more.get(p.name) || {};
        const rt = x.request_time;
        setText(r.p95, rt ? num(rt.p95_ms, rt.p95_ms >= 10 ? 0 : 1) + " ms" : "–");
        r.p95.title = rt ? "of the last request of " + rt.samples + " idle workers" : "no finished request on the scoreboard";
        const pss = p.kernel ? (p.kernel.pool_pss_bytes !== null ? p.kernel.pool_pss_bytes : p.kernel.worker_pss_sum_bytes) : null;
        const budget = s ? s.memory_budget_bytes : null;
        setText(r.pss, bytes(pss) + " / " + (budget ? bytes(budget) : "–"));
        const oc = opcacheText(x.opcache);
        setText(r.opcache, oc.text);
        r.opcache.title = oc.title || "";
        const applied = s && s.applied_workers !== null ? s.applied_workers : p.pm ? p.pm.max_children : null;
        const rec = s ? s.recommended_workers : null;
        setText(r.size, (rec === null || rec === undefined ? "–" : rec) + " / " + (applied === null || applied === undefined ? "–" : applied));
        const e = lastEvent.get(p.name);
        if (e) {
          fill(r.event, h("span", { class: "sev-" + e.severity }, e.message), h("span", { class: "sub" }, e.type + " · " + ago(e.ts_ms)));
        } else {
          fill(r.event, "–");
        }
      }
      for (const [name, r] of rows) {
        if (!seen.has(name)) {
          r.tr.remove();
          rows.delete(name);
          const c = sparks.get(name);
          if (c) {
            c.destroy();
            sparks.delete(name);
          }
        }
      }
      empty.hidden = pools.length > 0;
      const lr = status && status.last_reload;
      if (lr && !lr.accepted) {
        fill(
          banner,
          h(
            "div",
            { class: "banner", role: "alert" },
            h("strong", null, "The last configuration reload was refused (" + when(lr.at_ms) + "); nothing was changed."),
            h("ul", null, (lr.problems || []).map((t) => h("li", null, t)))
          )
        );
      } else {
        banner.replaceChildren();
      }
    }

    async function refreshSparks(pools) {
      if (!historyOn()) {
        return;
      }
      await Promise.all(
        pools.map(async (p) => {
          const [busy, queue] = await Promise.all([
            metricHistory(p.name, "phpfpm_active_processes", "now-1h"),
            metricHistory(p.name, "phpfpm_manager_accept_queue", "now-1h"),
          ]);
          const r = rows.get(p.name);
          if (!r) {
            return;
          }
          let c = sparks.get(p.name);
          if (!c) {
            c = makeChart(r.spark, {
              spark: true,
              height: 36,
              series: [
                { label: "Busy", color: "--c1" },
                { label: "Queue", color: "--c2" },
              ],
            });
            sparks.set(p.name, c);
          }
          c.setData(align([pointsOf(busy), pointsOf(queue)]), windowOf(busy));
        })
      );
    }

    return {
      root: root,
      title: "Overview",
      async refresh() {
        const [pools, scaling, extra, events, status] = await Promise.all([
          api("/api/v1/pools"),
          api("/api/v1/autoscaling"),
          api("/api/v1/overview"),
          api("/api/v1/events/recent?limit=200"),
          loadStatus(),
        ]);
        render(pools, scaling, extra, events, status);
        if (Date.now() - lastSparks >= SPARK_REFRESH_MS) {
          lastSparks = Date.now();
          await refreshSparks(pools);
        }
        return intervalOf(pools);
      },
      destroy() {
        for (const c of sparks.values()) {
          c.destroy();
        }
      },
    };
  }

  // ----------------------------------------------------------- pool view

  const CHARTS = [
    {
      id: "busy",
      title: "Workers",
      series: [
        { metric: "phpfpm_active_processes", label: "Busy", color: "--c1" },
        { metric: "phpfpm_total_processes", label: "Total", color: "--c3" },
      ],
    },
    {
      id: "queue",
      title: "Waiting connections",
      series: [
        { metric: "phpfpm_manager_accept_queue", label: "Accept queue (kernel)", color: "--c2" },
        { metric: "phpfpm_listen_queue", label: "Listen queue (php-fpm)", color: "--c1" },
      ],
    },
    {
      id: "rps",
      title: "Requests per second",
      series: [{ metric: "phpfpm_accepted_connections", label: "Requests/s", color: "--c1" }],
    },
    {
      id: "pss",
      title: "Memory (PSS)",
      format: bytes,
      series: [
        { metric: "phpfpm_manager_pool_pss_bytes", label: "Pool", color: "--c1" },
        { metric: "phpfpm_manager_worker_pss_p95_bytes", label: "Worker p95", color: "--c2" },
      ],
    },
    {
      id: "size",
      title: "Applied size (pm.max_children)",
      series: [{ metric: "phpfpm_manager_pm_max_children", label: "max_children", color: "--c3" }],
    },
  ];

  const WORKER_COLUMNS = [
    ["Slot", "num"],
    ["PID", "num"],
    ["State", null],
    ["Kernel", null],
    ["Request", null],
    ["Duration", "num"],
    ["CPU", "num"],
    ["PSS", "num"],
    ["Requests", "num"],
    ["Age", "num"],
  ];

  function poolView(name, params) {
    const enc = encodeURIComponent(name);
    let range = RANGES[params.get("range")] ? params.get("range") : "hour";
    let lastCharts = 0;
    let marks = [];
    const charts = new Map();
    const facts = h("dl", { class: "facts", id: "pool-facts" });
    const reasoning = h("div", { class: "reasoning", id: "reasoning" });
    const decisions = h("tbody");
    const workers = h("tbody");
    const events = h("tbody");
    const eventsNote = h("p", { class: "note" });
    const chartGrid = h("div", { class: "charts" });
    const rangeForm = h(
      "fieldset",
      null,
      h("legend", null, "Range"),
      Object.entries(RANGES).map(([id, r]) =>
        h(
          "label",
          null,
          h("input", {
            type: "radio",
            name: "range",
            value: id,
            checked: id === range,
            onchange: () => {
              range = id;
              history.replaceState(null, "", "#/pools/" + enc + "?range=" + id);
              lastCharts = Date.now();
              refreshCharts().catch(report);
            },
          }),
          " " + r.label
        )
      )
    );
    for (const c of CHARTS) {
      const host = h("div", { class: "chart", "data-chart": c.id });
      const sub = h("span", { class: "sub" });
      chartGrid.appendChild(h("figure", { "data-chart-figure": c.id }, h("figcaption", null, c.title, " ", sub), host));
      charts.set(c.id, {
        def: c,
        sub: sub,
        chart: makeChart(host, {
          height: 180,
          format: c.format,
          series: c.series,
          marks: () => marks,
        }),
      });
    }
    const root = h(
      "section",
      { "aria-labelledby": "pool-title" },
      h("p", null, h("a", { href: "#/" }, "← All pools")),
      h("h1", { id: "pool-title", tabindex: "-1" }, "Pool ", h("span", { "data-field": "pool-name" }, name)),
      facts,
      h("h2", { id: "why-title" }, "Why this size"),
      reasoning,
      h(
        "div",
        { class: "table-wrap", role: "region", "aria-labelledby": "why-title", tabindex: "0" },
        h(
          "table",
          { class: "cards", id: "decisions" },
          h("caption", null, "Recent decisions of the autoscaler"),
          h(
            "thead",
            null,
            h("tr", null, h("th", { scope: "col" }, "Time"), h("th", { scope: "col" }, "Decision"), h("th", { scope: "col" }, "The figures behind it"))
          ),
          decisions
        )
      ),
      h("h2", null, "History"),
      rangeForm,
      chartGrid,
      h("h2", { id: "events-title" }, "Events in this range"),
      eventsNote,
      h(
        "div",
        { class: "table-wrap", role: "region", "aria-labelledby": "events-title", tabindex: "0" },
        h(
          "table",
          { class: "cards", id: "pool-events" },
          h("caption", null, "Events of this pool, newest first (dashed lines on the charts)"),
          h(
            "thead",
            null,
            h("tr", null, ["Time", "Kind", "Severity", "Message"].map((t) => h("th", { scope: "col" }, t)))
          ),
          events
        )
      ),
      h("h2", { id: "workers-title" }, "Workers"),
      h(
        "div",
        { class: "table-wrap", role: "region", "aria-labelledby": "workers-title", tabindex: "0" },
        h(
          "table",
          { class: "cards", id: "workers" },
          h("caption", null, "Workers from php-fpm's status page joined with /proc"),
          h("thead", null, h("tr", null, WORKER_COLUMNS.map(([t, cls]) => h("th", { scope: "col", class: cls }, t)))),
          workers
        )
      )
    );

    /** One figure; `wide` ones (long text) take a whole row of the grid. */
    function fact(label, value, field, wide) {
      return h("div", { class: wide ? "wide" : null }, h("dt", null, label), h("dd", { "data-field": field }, value));
    }

    function renderFacts(p, s, extra) {
      const st = poolState(p);
      const w = p.workers;
      const k = p.kernel || {};
      const oc = opcacheText(extra && extra.opcache);
      const rt = extra && extra.request_time;
      fill(
        facts,
        fact("State", h("span", { class: "state-" + st, "data-state": st }, st), "state"),
        stateWhy(p) ? fact("Why", stateWhy(p), "why", true) : null,
        fact("Busy / idle / total", w ? w.active + " / " + w.idle + " / " + w.total : "–", "workers"),
        fact("Accept queue", queueText(p) + (k.accept_queue_limit ? " of " + k.accept_queue_limit : ""), "queue"),
        fact("Process manager", p.pm ? p.pm.pm + ", max_children " + p.pm.max_children : p.process_manager || "–", "pm"),
        fact("Master", p.master && p.master.pid ? "pid " + p.master.pid + ", generation " + p.master.generation + (p.master.adopted ? ", adopted" : "") : "–", "master"),
        fact("Worker CPU", k.worker_cpu_percent !== null && k.worker_cpu_percent !== undefined ? num(k.worker_cpu_percent) + " %" : "–", "cpu"),
        fact("Pool PSS", bytes(k.pool_pss_bytes), "pss"),
        fact("Request time", rt ? "p50 " + num(rt.p50_ms) + " ms · p95 " + num(rt.p95_ms) + " ms" : "–", "request-time"),
        fact("OPcache", oc.text, "opcache"),
        fact("Recommended / applied", (s && s.recommended_workers !== null ? s.recommended_workers : "–") + " / " + (s && s.applied_workers !== null ? s.applied_workers : p.pm ? p.pm.max_children : "–"), "size"),
        p.master && p.master.last_apply_error ? fact("Last change refused", p.master.last_apply_error, "apply-error", true) : null
      );
      fill(reasoning, explain(s).map((t) => h("p", null, t)));
    }

    function renderWorkers(list) {
      fill(
        workers,
        list.map((w) => {
          const req = (w.request_method ? w.request_method + " " : "") + (w.request_uri || "");
          return h(
            "tr",
            { "data-pid": w.pid },
            h("td", { class: "num", "data-label": "Slot" }, w.slot),
            h("td", { class: "num", "data-label": "PID" }, w.pid),
            h("td", { "data-label": "State", "data-field": "state" }, w.state),
            h("td", { "data-label": "Kernel" }, w.proc_state || "–"),
            h("td", { class: "uri", "data-label": "Request", "data-field": "request" }, req || "–"),
            h("td", { class: "num", "data-label": "Duration" }, seconds(w.request_duration_us / 1e6)),
            h("td", { class: "num", "data-label": "CPU" }, w.cpu_percent !== null && w.cpu_percent !== undefined ? num(w.cpu_percent) + " %" : "–"),
            h("td", { class: "num", "data-label": "PSS" }, bytes(w.pss_bytes)),
            h("td", { class: "num", "data-label": "Requests" }, w.requests),
            h("td", { class: "num", "data-label": "Age" }, seconds(w.age_seconds))
          );
        })
      );
      if (!list.length) {
        fill(workers, h("tr", null, h("td", { colspan: WORKER_COLUMNS.length }, "No workers on the status page.")));
      }
    }

    function renderEvents(list) {
      fill(
        events,
        list.map((e) =>
          h(
            "tr",
            { "data-type": e.type },
            h("td", { "data-label": "Time" }, when(e.ts_ms)),
            h("td", { "data-label": "Kind" }, e.type),
            h("td", { "data-label": "Severity", class: "sev-" + e.severity }, e.severity),
            h("td", { "data-label": "Message", class: "msg", "data-field": "message" }, e.message)
          )
        )
      );
      if (!list.length) {
        fill(events, h("tr", null, h("td", { colspan: 4 }, "No events in this range.")));
      }
    }

    function renderDecisions(list) {
      fill(
        decisions,
        list.map((e) =>
          h(
            "tr",
            null,
            h("td", { "data-label": "Time" }, when(e.ts_ms)),
            h("td", { "data-label": "Decision", class: "msg", "data-field": "decision" }, e.message),
            h("td", { "data-label": "The figures behind it", class: "msg", "data-field": "figures" }, explain(e.details).join(" "))
          )
        )
      );
      if (!list.length) {
        fill(decisions, h("tr", null, h("td", { colspan: 3 }, "No decision recorded yet.")));
      }
    }

    /** Events of this pool in the chosen range, stored or (without storage) recent. */
    async function loadEvents() {
      if (historyOn()) {
        const a = await api("/api/v1/events?pool=" + enc + "&from=" + encodeURIComponent(RANGES[range].from) + "&limit=500");
        return (a.events || []).map((e) => ({
          ts_ms: e.ts_ms,
          type: e.kind,
          severity: e.severity,
          message: e.message,
          details: e.details,
        }));
      }
      const a = await api("/api/v1/events/recent?pool=" + enc + "&limit=500");
      return a.events || [];
    }

    async function refreshCharts() {
      const list = await loadEvents();
      list.sort((a, b) => b.ts_ms - a.ts_ms);
      marks = list.filter((e) => e.type !== "scale_decision" || (e.details && e.details.to_workers !== null));
      renderEvents(list);
      renderDecisions(list.filter((e) => e.type === "scale_decision").slice(0, 10));
      if (!historyOn()) {
        eventsNote.textContent = "History is off (storage.database_path): charts and stored events need it.";
        return;
      }
      eventsNote.textContent = "";
      const from = RANGES[range].from;
      await Promise.all(
        CHARTS.map(async (c) => {
          const answers = await Promise.all(c.series.map((s) => metricHistory(name, s.metric, from)));
          const cols = align(answers.map(pointsOf));
          const entry = charts.get(c.id);
          entry.chart.setData(cols, windowOf(answers[0]));
          const step = answers[0] ? answers[0].step_seconds : null;
          const last = cols[1].length ? cols[1][cols[1].length - 1] : null;
          let hi = null;
          for (const v of cols[1]) {
            if (v !== null && (hi === null || v > hi)) {
              hi = v;
            }
          }
          const fmt = c.format || num;
          entry.sub.textContent =
            cols[0].length === 0
              ? "(no data yet)"
              : "(" + c.series[0].label + ": now " + (last === null ? "–" : fmt(last)) + ", highest " + (hi === null ? "–" : fmt(hi)) +
                "; " + cols[0].length + " points" + (step ? " every " + num(step, 0) + " s" : "") + ")";
        })
      );
    }

    return {
      root: root,
      title: "Pool " + name,
      async refresh() {
        const [p, s, w, extra] = await Promise.all([
          api("/api/v1/pools/" + enc),
          api("/api/v1/pools/" + enc + "/scale"),
          api("/api/v1/pools/" + enc + "/workers"),
          api("/api/v1/overview"),
          manager.status ? null : loadStatus(),
        ]);
        const x = ((extra && extra.pools) || []).find((e) => e.pool === name);
        renderFacts(p, s, x);
        renderWorkers(w.workers || []);
        if (Date.now() - lastCharts >= CHART_REFRESH_MS[range]) {
          lastCharts = Date.now();
          await refreshCharts();
        }
        return intervalOf([p]);
      },
      destroy() {
        for (const c of charts.values()) {
          c.chart.destroy();
        }
      },
    };
  }

  // --------------------------------------------------------- events view

  function eventsView(params) {
    const chosen = {
      pool: params.get("pool") || "",
      type: params.get("type") || "",
      severity: params.get("severity") || "",
      range: RANGES[params.get("range")] ? params.get("range") : "day",
    };
    const tbody = h("tbody");
    const count = h("p", { class: "note", role: "status" });
    const select = (id, label, key) => {
      const el = h("select", { id: "filter-" + id, name: key });
      el.addEventListener("change", () => {
        chosen[key] = el.value;
        const q = new URLSearchParams();
        for (const [k, v] of Object.entries(chosen)) {
          if (v) {
            q.set(k, v);
          }
        }
        history.replaceState(null, "", "#/events?" + q.toString());
        view.refresh().catch(report);
      });
      return { el: el, wrap: h("div", null, h("label", { for: "filter-" + id }, label), el) };
    };
    const pool = select("pool", "Pool", "pool");
    const type = select("type", "Kind", "type");
    const severity = select("severity", "Severity", "severity");
    const range = select("range", "Range", "range");
    fill(range.el, Object.entries(RANGES).map(([id, r]) => h("option", { value: id, selected: id === chosen.range }, r.label)));
    const root = h(
      "section",
      { "aria-labelledby": "events-title" },
      h("h1", { id: "events-title", tabindex: "-1" }, "Events"),
      h("form", { class: "filters", role: "search", "aria-label": "Filter events", onsubmit: (e) => e.preventDefault() }, pool.wrap, type.wrap, severity.wrap, range.wrap),
      count,
      h(
        "div",
        { class: "table-wrap", role: "region", "aria-label": "Events", tabindex: "0" },
        h(
          "table",
          { class: "cards", id: "events" },
          h("caption", null, "Events, newest first"),
          h("thead", null, h("tr", null, ["Time", "Pool", "Kind", "Severity", "Actor", "Message", "Details"].map((t) => h("th", { scope: "col" }, t)))),
          tbody
        )
      )
    );

    /** Options of a select: "all" plus the known values, keeping the chosen one. */
    function options(sel, values, current, allLabel) {
      const list = Array.from(new Set(values.concat(current ? [current] : []))).sort();
      const want = [""].concat(list).join("\n");
      if (sel.dataset.options === want) {
        return;
      }
      sel.dataset.options = want;
      fill(sel, h("option", { value: "", selected: !current }, allLabel), list.map((v) => h("option", { value: v, selected: v === current }, v)));
    }

    async function load() {
      if (historyOn()) {
        const q = new URLSearchParams({ from: RANGES[chosen.range].from, limit: "500" });
        for (const k of ["pool", "type", "severity"]) {
          if (chosen[k]) {
            q.set(k, chosen[k]);
          }
        }
        const [a, stats] = await Promise.all([
          api("/api/v1/events?" + q.toString()),
          api("/api/v1/events/stats?from=" + encodeURIComponent(RANGES.week.from)),
        ]);
        const list = (a.events || []).map((e) => ({
          ts_ms: e.ts_ms,
          pool: e.pool,
          type: e.kind,
          severity: e.severity,
          actor: e.actor,
          message: e.message,
          details: e.details,
        }));
        return { list: list, types: Object.keys(stats.by_type || {}), pools: Object.keys(stats.by_pool || {}) };
      }
      const q = new URLSearchParams({ limit: "500" });
      if (chosen.pool) {
        q.set("pool", chosen.pool);
      }
      if (chosen.type) {
        q.set("type", chosen.type);
      }
      const a = await api("/api/v1/events/recent?" + q.toString());
      const list = (a.events || []).filter((e) => !chosen.severity || e.severity === chosen.severity);
      return { list: list, types: list.map((e) => e.type), pools: list.map((e) => e.pool).filter(Boolean) };
    }

    const view = {
      root: root,
      title: "Events",
      async refresh() {
        const [pools] = await Promise.all([api("/api/v1/pools"), manager.status ? null : loadStatus()]);
        const got = await load();
        options(pool.el, pools.map((p) => p.name).concat(got.pools), chosen.pool, "All pools");
        options(type.el, got.types, chosen.type, "All kinds");
        options(severity.el, SEVERITIES, chosen.severity, "All severities");
        fill(
          tbody,
          got.list.map((e) =>
            h(
              "tr",
              { "data-type": e.type },
              h("td", { "data-label": "Time" }, when(e.ts_ms)),
              h("td", { "data-label": "Pool", "data-field": "pool" }, e.pool ? h("a", { href: poolHref(e.pool) }, e.pool) : "–"),
              h("td", { "data-label": "Kind", "data-field": "kind" }, e.type),
              h("td", { "data-label": "Severity", "data-field": "severity", class: "sev-" + e.severity }, e.severity),
              h("td", { "data-label": "Actor" }, e.actor || "–"),
              h("td", { "data-label": "Message", class: "msg", "data-field": "message" }, e.message),
              h("td", { "data-label": "Details", class: "msg" }, detailsText(e.details))
            )
          )
        );
        count.textContent = got.list.length + (got.list.length === 1 ? " event" : " events") + (historyOn() ? "" : " (recent only: history is off)");
        return intervalOf(pools);
      },
      destroy() {},
    };
    return view;
  }

  // ----------------------------------------------------- routing, polling

  let current = null;
  let shownOnce = false;
  let timer = null;
  let generation = 0;
  let paused = false;
  const live = document.getElementById("live");

  function report(err) {
    if (err instanceof AuthNeeded) {
      live.classList.remove("error");
      live.textContent = "Waiting for an API key.";
      return;
    }
    live.classList.add("error");
    live.textContent =
      err instanceof ApiFailure
        ? "The manager answered " + err.status + " (" + err.code + "): " + err.message
        : "Cannot reach the manager: " + (err && err.message ? err.message : String(err));
  }

  async function tick(gen) {
    if (gen !== generation || paused || !current) {
      return;
    }
    let next = POLL_MAX_MS;
    try {
      next = await current.refresh();
      if (gen !== generation) {
        return;
      }
      live.classList.remove("error");
      live.textContent = "Updated " + clock(Date.now()) + " · every " + num(next / 1000, 1) + " s";
      live.dataset.updated = String(Date.now());
      // How many refreshes have completed and how often they come: the
      // page's own account of its polling, for whoever checks it follows.
      live.dataset.polls = String(Number(live.dataset.polls || 0) + 1);
      live.dataset.every = String(next);
    } catch (err) {
      if (gen !== generation) {
        return;
      }
      report(err);
      if (err instanceof AuthNeeded) {
        return;
      }
    }
    if (gen === generation && !paused) {
      clearTimeout(timer);
      timer = setTimeout(() => tick(gen), next);
    }
  }

  function route() {
    const hash = location.hash || "#/";
    const [path, query] = hash.slice(1).split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean);
    if (parts[0] === "pools" && parts[1]) {
      return { nav: "overview", make: () => poolView(decodeURIComponent(parts[1]), params) };
    }
    if (parts[0] === "events") {
      return { nav: "events", make: () => eventsView(params) };
    }
    return { nav: "overview", make: () => overviewView() };
  }

  function show() {
    generation += 1;
    clearTimeout(timer);
    if (current) {
      current.destroy();
    }
    const r = route();
    current = r.make();
    const main = document.getElementById("main");
    fill(main, current.root);
    document.title = current.title + " · phpfpm-manager";
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === r.nav) {
        a.setAttribute("aria-current", "page");
      } else {
        a.removeAttribute("aria-current");
      }
    }
    // After a move within the page, focus goes to the new view's heading
    // so that keyboard and screen reader users start there.
    const heading = main.querySelector("h1");
    if (heading && shownOnce) {
      heading.focus();
    }
    shownOnce = true;
    tick(generation);
  }

  // ------------------------------------------------------------ API key

  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const keyWhy = document.getElementById("key-why");
  const keyError = document.getElementById("key-error");

  function openKeyDialog(why, refused) {
    keyWhy.textContent = why;
    if (refused) {
      keyError.textContent = "The manager refused this key. Check it and enter it again.";
      keyError.hidden = false;
      input.setAttribute("aria-invalid", "true");
    } else {
      keyError.textContent = "";
      keyError.hidden = true;
      input.removeAttribute("aria-invalid");
    }
    input.value = "";
    if (!dialog.open) {
      dialog.showModal();
    }
    input.focus();
  }

  /** The manager answered 401: stop polling and ask for a key. */
  function askForKey(refused) {
    paused = true;
    openKeyDialog("The manager asks for an API key to show its figures.", refused);
  }

  function resume() {
    paused = false;
    show();
  }

  // No form submission (the policy allows none): the key is taken here.
  document.getElementById("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = input.value.trim();
    input.value = "";
    if (!key) {
      return;
    }
    // A header carries printable ASCII only; anything else cannot be a key
    // (and fetch would refuse to send it).
    if (!/^[\x21-\x7e]+$/.test(key)) {
      keyError.textContent = "A key is letters, digits and punctuation, with no space: check what was pasted.";
      keyError.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    storeKey(key);
    dialog.close();
    resume();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    storeKey(null);
    input.value = "";
    dialog.close();
    resume();
  });
  document.getElementById("key-cancel").addEventListener("click", () => {
    input.value = "";
    dialog.close();
  });
  dialog.addEventListener("close", () => {
    if (paused) {
      live.textContent = "Waiting for an API key (the API key button asks again).";
    }
  });
  document.getElementById("key-button").addEventListener("click", () => {
    openKeyDialog("Set the API key the manager asks for.", false);
  });

  window.addEventListener("hashchange", show);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !paused) {
      generation += 1;
      tick(generation);
    }
  });
  show();
})();
