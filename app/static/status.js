// gateway-metrics status page: polls ./health and ./summary and draws what they say; its
// trend charts open with the history ./trends holds and go on with the polled figures.
//
// Rules kept throughout: every figure shown comes from those answers (a missing or null
// figure reads "no data", never 0); every text from the service is written with
// textContent, never parsed as HTML (model names come from callers); the bearer token lives
// in sessionStorage only and travels only in the Authorization header of those calls.
// Each displayed figure carries data-source and data-path (where in which answer it comes
// from) and data-unit, so the browser test checks the page against the JSON.
"use strict";
(() => {
  const TOKEN_KEY = "gateway-metrics.status.token";
  const INTERVAL_KEY = "gateway-metrics.status.interval";
  const INTERVALS_S = [2, 5, 10, 30, 60];
  const DEFAULT_INTERVAL_S = 5;
  /** Trend charts keep the last 15 minutes: the history the page opens with, then its polls. */
  const HISTORY_MS = 15 * 60 * 1000;
  /** A chart spans at least 2 minutes, so the first few samples do not fill its width. */
  const MIN_SPAN_MS = 2 * 60 * 1000;
  /** The summary answers within its backend deadline (2 s by default) and a little. */
  const FETCH_TIMEOUT_MS = 10000;
  /** The models table shows the busiest few; "Show all" shows up to the cap (DOM size). */
  const FEW_MODEL_ROWS = 12;
  const MAX_MODEL_ROWS = 200;
  const SUMMARY_URL = "summary?category=providers&category=models&category=performance&category=business";
  const HEALTH_URL = "health";
  const TRENDS_URL = `trends?span_seconds=${HISTORY_MS / 1000}`;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const obj = (v) => (v !== null && typeof v === "object" && !Array.isArray(v) ? v : {});
  const list = (v) => (Array.isArray(v) ? v : []);

  // ---- Formatting: one function per unit; null or missing is "no data". --------------

  const en = (v, digits) =>
    v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const FORMAT = {
    ms: (v) => (Math.abs(v) < 1000 ? `${en(v, v < 10 ? 1 : 0)} ms` : `${en(v / 1000, v < 10000 ? 2 : 1)} s`),
    percent: (v) => {
      const p = v * 100;
      return `${en(p, p === 0 || p === 100 ? 0 : p < 1 ? 2 : 1)}%`;
    },
    rate: (v) => `${en(v, v === 0 ? 0 : v < 0.1 ? 3 : v < 10 ? 2 : 1)} req/s`,
    score: (v) => en(v, 2),
    usd: (v) => `$${en(v, v < 1 ? 4 : 2)}`,
    tokens: (v) => (v >= 1e6 ? `${en(v / 1e6, 2)} M tokens` : v >= 1e4 ? `${en(v / 1e3, 1)} k tokens` : `${en(v, 0)} tokens`),
    calls: (v) => `${en(v, 0)} ${v === 1 ? "call" : "calls"}`,
    requests: (v) => en(v, 0),
    inflight: (v) => `${en(v, 0)} ${v === 1 ? "request" : "requests"}`,
    pace: (v) => `${en(v, v < 10 ? 1 : 0)} tokens/s`,
  };

  /** A span showing one figure of an answer, tagged with where it comes from. */
  function figure(source, path, value, unit) {
    const span = document.createElement("span");
    span.className = "fig";
    span.dataset.source = source;
    span.dataset.path = JSON.stringify(path);
    span.dataset.unit = unit;
    if (isNum(value)) {
      span.textContent = FORMAT[unit](value);
    } else {
      span.textContent = "no data";
      span.classList.add("nodata");
    }
    return span;
  }

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const clock = (date) =>
    date.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function parseTime(text) {
    const date = typeof text === "string" ? new Date(text) : null;
    return date && !Number.isNaN(date.getTime()) ? date : null;
  }

  function duration(seconds) {
    if (!isNum(seconds)) return "?";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${en(seconds / 3600, 1)} h`;
  }

  // ---- Token (sessionStorage only; memory when storage is off) ---------------------

  let memoryToken = null;
  const token = {
    get() {
      try { return sessionStorage.getItem(TOKEN_KEY); } catch { return memoryToken; }
    },
    set(value) {
      memoryToken = value;
      try { sessionStorage.setItem(TOKEN_KEY, value); } catch { /* memory only */ }
    },
    clear() {
      memoryToken = null;
      try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* memory only */ }
    },
  };

  class AuthError extends Error {}

  async function getJSON(url) {
    const headers = { Accept: "application/json" };
    const bearer = token.get();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(url, {
        headers, cache: "no-store", credentials: "omit", redirect: "error", signal: controller.signal,
      });
      if (response.status === 401) throw new AuthError(bearer ? "refused" : "needed");
      if (!response.ok) throw new Error(`${url.split("?")[0]} answered HTTP ${response.status}`);
      return await response.json();
    } catch (error) {
      if (error.name === "AbortError") throw new Error(`${url.split("?")[0]} did not answer within ${FETCH_TIMEOUT_MS / 1000} s`);
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- State ---------------------------------------------------------------------------

  const state = {
    intervalS: DEFAULT_INTERVAL_S,
    paused: false,
    needToken: false,
    timer: null,
    polling: false,
    health: null,
    summary: null,
    updatedAt: null,       // when the last good answers arrived (this browser's clock)
    failure: null,         // { at, message } when the last poll failed
    history: [],           // { t, rate, p95, scores: {provider: score}, loaded }, oldest first
    trends: null,          // what the history came with: { source, points, note } or { failed }
    openedAt: null,        // the first polled point: what is older came from ./trends
    seriesIndex: new Map(), // provider -> colour/dash slot, stable while the page lives
    generation: 0,
    allModels: false,
  };

  // ---- Providers ------------------------------------------------------------------------

  const STATES = {
    healthy: { icon: "✓", word: "Healthy" },
    degraded: { icon: "⚠", word: "Degraded" },
    unavailable: { icon: "✕", word: "Unavailable" },
    unknown: { icon: "?", word: "Unknown" },
  };
  const CIRCUITS = {
    closed: "closed",
    open: "open: no calls sent",
    half_open: "half-open: trial calls only",
  };

  function reasonText(reason) {
    if (typeof reason === "string") return reason;
    const r = obj(reason);
    for (const key of ["text", "message", "reason", "detail"]) if (typeof r[key] === "string") return r[key];
    return JSON.stringify(reason);
  }

  /** Provider names in the failover order, then any the order leaves out. */
  function providerOrder(health, summaryProviders) {
    const names = [];
    const add = (name) => { if (typeof name === "string" && !names.includes(name)) names.push(name); };
    list(health.failover_order).forEach(add);
    list(health.providers).map((p) => obj(p).provider).sort().forEach(add);
    summaryProviders.map((p) => obj(p).provider).sort().forEach(add);
    return names;
  }

  /** A score component with a bar under it: the share it measures. Shares where more is
   *  better take the score's default state colours (0.8 healthy, 0.5 degraded); the error
   *  rate's bar is the failed share itself, always in the "bad" colour. */
  function component(label, source, path, value, unit, badShare) {
    const row = el("div", "component", el("dt", null, label), el("dd", null, figure(source, path, value, unit)));
    const bar = el("div", "bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = el("span");
    if (isNum(value)) {
      const share = Math.max(0, Math.min(1, value));
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      if (badShare || share < 0.5) fill.className = "low";
      else if (share < 0.8) fill.className = "mid";
    }
    bar.append(fill);
    row.append(bar);
    return row;
  }

  function fact(label, node) {
    return el("div", null, el("dt", null, label), el("dd", null, node));
  }

  function providerCard(name, rank, healthEntry, summaryEntry) {
    const h = healthEntry ? obj(healthEntry) : null;
    const s = summaryEntry ? obj(summaryEntry) : null;
    const hp = (key) => ["providers", { provider: name }, key];
    const sp = (key) => ["metrics", "providers", "providers", { provider: name }, key];
    const stateName = String((h && h.state) || (s && s.state) || "unknown");
    const look = STATES[stateName] || { icon: "•", word: stateName };
    const card = el("li", `card state-${stateName}`);
    card.dataset.provider = name;
    card.dataset.state = stateName;

    const badge = el("span", `badge ${STATES[stateName] ? stateName : "unknown"}`,
      el("span", null, look.icon), el("span", "state-word", look.word));
    badge.firstChild.setAttribute("aria-hidden", "true");
    const head = el("div", "card-head",
      el("span", "rank", rank ? `#${rank}` : "unranked"), el("h3", null, name), badge);
    head.firstChild.setAttribute("aria-label", rank ? `failover rank ${rank}` : "not in the failover order");

    const score = h ? figure("health", hp("score"), h.score, "score")
      : figure("summary", sp("health_score"), s && s.health_score, "score");
    score.classList.add("score");
    const circuitName = (h && h.circuit) || (s && s.circuit) || null;
    const circuit = el("p", "circuit", "Circuit ",
      circuitName ? el("strong", String(circuitName), CIRCUITS[circuitName] || String(circuitName))
        : el("span", "nodata", "no data"));
    const scoreRow = el("div", "score-row", el("div", null, score, el("span", "score-label", "score of 1")), circuit);

    const components = el("dl", "components");
    if (h) {
      components.append(
        component("Availability", "health", hp("availability"), h.availability, "percent", false),
        component("Error rate", "health", hp("error_rate"), h.error_rate, "percent", true),
        component("Latency score (Apdex)", "health", hp("latency_score"), h.latency_score, "score", false),
      );
    } else {
      components.append(el("p", "nodata", "Not tracked by this instance's health tracker."));
    }

    const facts = el("dl", "facts",
      fact("Traffic", s ? figure("summary", sp("requests_per_second"), s.requests_per_second, "rate")
        : el("span", "nodata", "no data")),
      fact("p95", s ? figure("summary", sp("p95_response_time_ms"), s.p95_response_time_ms, "ms")
        : el("span", "nodata", "no data")),
      fact("Cost", s ? figure("summary", sp("cost_usd"), s.cost_usd, "usd") : el("span", "nodata", "no data")),
    );
    // Newer services split the calls that are neither success nor error: shown when sent.
    if (s && "throttled_share" in s) facts.append(fact("Throttled", figure("summary", sp("throttled_share"), s.throttled_share, "percent")));
    if (s && "client_error_share" in s) {
      facts.append(fact("Caller errors", figure("summary", sp("client_error_share"), s.client_error_share, "percent")));
    }
    if (h && (isNum(h.calls) || h.calls === null)) {
      facts.append(fact("In window", figure("health", hp("calls"), h.calls, "calls")));
    }
    if (h && "in_flight" in h) facts.append(fact("In flight", figure("health", hp("in_flight"), h.in_flight, "requests")));
    const until = h && parseTime(h.rate_limited_until);
    if (until && until > new Date()) facts.append(fact("Throttled until", el("span", null, clock(until))));

    const reasons = list(h && h.reasons).map(reasonText);
    const reasonList = el("ul", reasons.length ? "reasons" : "reasons none");
    reasonList.setAttribute("aria-label", `Why ${name} is ${look.word.toLowerCase()}`);
    if (reasons.length) reasons.forEach((r) => reasonList.append(el("li", null, r)));
    else reasonList.append(el("li", null, "No reasons given."));

    card.append(head, scoreRow, components, facts, reasonList);
    return card;
  }

  function renderProviders(health, summary) {
    const summaryProviders = list(obj(obj(summary.metrics).providers).providers);
    const byName = (entries) => new Map(entries.map((e) => [obj(e).provider, e]));
    const healthBy = byName(list(health.providers));
    const summaryBy = byName(summaryProviders);
    const order = list(health.failover_order);
    const names = providerOrder(health, summaryProviders);
    const counts = { healthy: 0, degraded: 0, unavailable: 0, unknown: 0 };
    const cards = names.map((name) => {
      const card = providerCard(name, order.indexOf(name) + 1, healthBy.get(name), summaryBy.get(name));
      counts[card.dataset.state] = (counts[card.dataset.state] || 0) + 1;
      return card;
    });
    $("cards").replaceChildren(...cards);
    if (!cards.length) {
      $("cards").append(el("li", "card", el("p", "nodata", "No provider has been called yet.")));
    }
    const source = health.source === "fleet" ? "all replicas" : "this instance";
    const window = isNum(health.window_seconds) ? ` over the last ${duration(health.window_seconds)}` : "";
    $("providers-note").textContent =
      `${counts.healthy} healthy · ${counts.degraded} degraded · ${counts.unavailable} unavailable · ` +
      `${counts.unknown} unknown. Best first, in failover order; health from ${source}${window}.`;
  }

  // ---- Fleet ------------------------------------------------------------------------------

  function tile(label, node, sub, bad) {
    const dd = el("dd", null, node);
    if (sub) dd.append(el("span", "sub", sub));
    return el("div", bad ? "tile bad" : "tile", el("dt", null, label), dd);
  }

  function renderFleet(summary) {
    const metrics = obj(summary.metrics);
    const perf = obj(metrics.performance);
    const biz = obj(metrics.business);
    const p = (key) => ["metrics", "performance", key];
    const b = (key) => ["metrics", "business", key];
    const errorRate = perf.error_rate;
    $("fleet").replaceChildren(
      tile("Requests", figure("summary", p("requests_per_second"), perf.requests_per_second, "rate"), "gateway responses"),
      tile("Error rate", figure("summary", p("error_rate"), errorRate, "percent"), "of responses",
        isNum(errorRate) && errorRate >= 0.05),
      tile("Latency p50", figure("summary", p("p50_ms"), perf.p50_ms, "ms"), "gateway response"),
      tile("Latency p95", figure("summary", p("p95_ms"), perf.p95_ms, "ms"), "gateway response"),
      tile("Latency p99", figure("summary", p("p99_ms"), perf.p99_ms, "ms"), "gateway response"),
      tile("First token p95", figure("summary", p("ttft_p95_ms"), perf.ttft_p95_ms, "ms"), "streamed calls"),
      tile("Per output token p95", figure("summary", p("tpot_p95_ms"), perf.tpot_p95_ms, "ms"), "streamed, after the first"),
      tile("Tokens", figure("summary", b("total_tokens_used"), biz.total_tokens_used, "tokens"), "input + output, since start"),
      tile("Cost", figure("summary", b("total_cost_usd"), biz.total_cost_usd, "usd"), "upstream, since start"),
      tile("Cache hit rate", figure("summary", p("cache_hit_rate"), perf.cache_hit_rate, "percent"), "of lookups"),
      tile("In flight", figure("summary", p("in_flight"), perf.in_flight, "inflight"), "being served now"),
    );
    const where = summary.source === "prometheus" ? "all replicas, from Prometheus" : "this instance";
    const window = isNum(summary.window_seconds) ? `Rates and percentiles over the last ${duration(summary.window_seconds)}` : "Rates and percentiles";
    const at = parseTime(summary.timestamp);
    $("fleet-note").textContent = `${window}; ${where}${at ? `; as of ${clock(at)}` : ""}.`;
  }

  // ---- Models -------------------------------------------------------------------------------

  function renderModels(summary) {
    const models = list(obj(obj(summary.metrics).models).models)
      .map(obj)
      .sort((a, z) => (isNum(z.requests_total) ? z.requests_total : -1) - (isNum(a.requests_total) ? a.requests_total : -1));
    const limit = state.allModels ? MAX_MODEL_ROWS : FEW_MODEL_ROWS;
    const rows = models.slice(0, limit).map((m) => {
      const path = (key) => ["metrics", "models", "models", { provider: m.provider, model: m.model }, key];
      const cell = (key, unit) => el("td", "num", figure("summary", path(key), m[key], unit));
      const model = el("td", "model", String(m.model ?? "?"));
      model.title = String(m.model ?? "");
      const error = cell("error_rate", "percent");
      if (isNum(m.error_rate) && m.error_rate >= 0.05) error.classList.add("bad");
      const row = el("tr", null, model, el("td", null, String(m.provider ?? "?")),
        cell("requests_total", "requests"), cell("requests_per_second", "rate"), error,
        cell("p95_ms", "ms"), cell("ttft_p95_ms", "ms"), cell("tpot_p50_ms", "ms"), cell("tpot_p95_ms", "ms"),
        cell("output_tokens_per_second", "pace"));
      return row;
    });
    if (!rows.length) {
      const empty = el("td", "nodata", "No model has been called yet.");
      empty.colSpan = $("models").tHead.rows[0].cells.length;
      rows.push(el("tr", null, empty));
    }
    $("models").tBodies[0].replaceChildren(...rows);
    const shown = models.length > limit ? `; the ${limit} busiest shown` : "";
    const toggle = $("models-toggle");
    toggle.hidden = models.length <= FEW_MODEL_ROWS;
    toggle.setAttribute("aria-expanded", String(state.allModels));
    toggle.textContent = state.allModels ? `Show the ${FEW_MODEL_ROWS} busiest` : `Show all ${Math.min(models.length, MAX_MODEL_ROWS)}`;
    const window = isNum(summary.window_seconds) ? `rates, errors and percentiles over the last ${duration(summary.window_seconds)}` : "";
    $("models-note").textContent =
      `${models.length} provider/model pairs${shown}. Requests since start; ${window}. ` +
      "TTFT: time to first token. TPOT: time per output token after the first. " +
      "Tokens/s: the pace of a streamed answer after its first token (1 / mean TPOT), not the model's throughput.";
  }

  // ---- Trend charts (inline SVG) ------------------------------------------------------------

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  /** A rounded upper bound for a y axis: 1, 2 or 5 times a power of ten. */
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  /** Axis ticks: short, and 0 is just 0. */
  function axisLabel(v, unit) {
    if (v === 0) return "0";
    if (unit === "score") return FORMAT.score(v);
    if (unit === "ms") return v < 1000 ? `${en(v, 0)} ms` : `${en(v / 1000, Number.isInteger(v / 1000) ? 0 : 1)} s`;
    return en(v, Number.isInteger(v) ? 0 : 1);
  }

  const W = 320, H = 120, LEFT = 46, RIGHT = 6, TOP = 6, BOTTOM = 18;

  /** series: [{ name, slot, points: [[t, v|null]] }]; yMax fixed or from the data. */
  function drawChart(target, { title, unit, series, yMax, legend, marker }) {
    const now = Date.now();
    const allPoints = series.flatMap((s) => s.points);
    const values = allPoints.map(([, v]) => v).filter(isNum);
    const first = allPoints.length ? Math.min(...allPoints.map(([t]) => t)) : now;
    const span = Math.max(MIN_SPAN_MS, now - first);
    const top = yMax ?? niceMax(Math.max(...values, 0) * 1.1);
    const x = (t) => LEFT + ((t - (now - span)) / span) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (1 - Math.min(v, top) / top) * (H - TOP - BOTTOM);

    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", preserveAspectRatio: "xMidYMid meet" });
    for (const fraction of [0, 0.5, 1]) {
      const v = top * fraction;
      chart.append(svg("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v) }));
      const label = svg("text", { class: "axis", x: LEFT - 5, y: y(v) + 3, "text-anchor": "end" });
      label.textContent = axisLabel(v, unit);
      chart.append(label);
    }
    const start = svg("text", { class: "axis", x: LEFT, y: H - 4 });
    start.textContent = `−${duration(span / 1000)}`;
    const end = svg("text", { class: "axis", x: W - RIGHT, y: H - 4, "text-anchor": "end" });
    end.textContent = "now";
    chart.append(start, end);
    if (isNum(marker) && marker > now - span) {
      // Where the page opened: left of it, the history it loaded; right of it, its polls.
      chart.append(svg("line", { class: "opened", x1: x(marker), x2: x(marker), y1: TOP, y2: H - BOTTOM }));
    }

    for (const s of series) {
      // A null breaks the line: a gap says "no data", a drop to zero would invent one.
      const runs = [];
      let run = [];
      for (const [t, v] of s.points) {
        if (isNum(v)) run.push([x(t), y(v)]);
        else if (run.length) { runs.push(run); run = []; }
      }
      if (run.length) runs.push(run);
      const cls = s.slot === null ? "" : ` s${s.slot % 6}`;
      for (const r of runs) {
        if (r.length === 1) {
          chart.append(svg("circle", { class: `dot${cls}`, cx: r[0][0], cy: r[0][1], r: 2.5 }));
          continue;
        }
        const d = r.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
        if (series.length === 1) {
          const base = y(0).toFixed(1);
          chart.append(svg("path", { class: "area", d: `${d}L${r[r.length - 1][0].toFixed(1)},${base}L${r[0][0].toFixed(1)},${base}Z` }));
        }
        chart.append(svg("path", { class: `line${cls}`, d }));
      }
    }

    const describe = (s) => {
      const vs = s.points.map(([, v]) => v).filter(isNum);
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const fmt = (v) => (isNum(v) ? FORMAT[unit](v) : "no data");
      return vs.length
        ? `${legend ? `${s.name}: ` : ""}now ${fmt(last)}, min ${fmt(Math.min(...vs))}, max ${fmt(Math.max(...vs))}`
        : `${legend ? `${s.name}: ` : ""}no data yet`;
    };
    const samples = series.length ? series[0].points.length : 0;
    const text = `${title}, last ${duration(span / 1000)} (${samples} ${samples === 1 ? "sample" : "samples"}): ` +
      (series.length ? series.map(describe).join("; ") : "no data yet");
    chart.setAttribute("aria-label", text);

    const lastValue = series.length === 1 && series[0].points.length ? series[0].points[series[0].points.length - 1][1] : undefined;
    const caption = el("figcaption", null, el("strong", null, title),
      lastValue === undefined ? null : el("span", isNum(lastValue) ? null : "nodata", isNum(lastValue) ? FORMAT[unit](lastValue) : "no data"));
    const parts = [caption, chart];
    if (legend) {
      const items = series.map((s) => {
        const key = svg("svg", { viewBox: "0 0 22 8", "aria-hidden": "true" });
        key.append(svg("path", { class: `line s${s.slot % 6}`, d: "M1,4L21,4" }));
        return el("li", null, key, s.name);
      });
      parts.push(el("ul", "legend", ...items));
    }
    parts.push(el("p", "summary muted", series.length === 1 ? describe(series[0]) : `${samples} ${samples === 1 ? "sample" : "samples"}.`));
    target.replaceChildren(...parts);
    target.dataset.samples = String(samples);
  }

  function slotFor(provider) {
    if (!state.seriesIndex.has(provider)) state.seriesIndex.set(provider, state.seriesIndex.size);
    return state.seriesIndex.get(provider);
  }

  function renderCharts() {
    const h = state.history;
    const marker = h.length && h[0].t < state.openedAt ? state.openedAt : null;
    drawChart($("chart-rate"), {
      title: "Requests per second", unit: "rate", marker,
      series: [{ name: "requests", slot: null, points: h.map((e) => [e.t, e.rate]) }],
    });
    drawChart($("chart-p95"), {
      title: "Latency p95", unit: "ms", marker,
      series: [{ name: "p95", slot: null, points: h.map((e) => [e.t, e.p95]) }],
    });
    const names = [...new Set(h.flatMap((e) => Object.keys(e.scores)))];
    drawChart($("chart-scores"), {
      title: "Provider health scores", unit: "score", yMax: 1, legend: true, marker,
      series: names.map((name) => ({
        name, slot: slotFor(name), points: h.map((e) => [e.t, name in e.scores ? e.scores[name] : null]),
      })),
    });
    renderTrendsNote();
  }

  const SOURCES = { prometheus: "the metrics backend", local: "this instance's own history" };

  function renderTrendsNote() {
    const t = state.trends;
    const polled = `polled by this page since ${state.openedAt ? clock(new Date(state.openedAt)) : "it opened"}`;
    const note = $("trends-note");
    note.dataset.history = t && !t.failed ? String(t.points) : "0";
    if (!t) note.textContent = `The last 15 minutes: ${polled}.`;
    else if (t.failed) note.textContent = `No history (${t.failed}); ${polled}.`;
    else if (!t.points) note.textContent = `No history${t.note ? ` (${t.note})` : ""}; ${polled}.`;
    else {
      const fallback = t.fallback ? " (the backend did not answer)" : "";
      note.textContent = `The last 15 minutes: from ${SOURCES[t.source] || String(t.source)}${fallback}, then ${polled}; the dashed line marks where.`;
    }
  }

  /** The history ./trends answered, in this browser's clock, before any polled point. */
  function loadHistory(answer) {
    const a = obj(answer);
    const end = parseTime(a.timestamp);
    const shift = end ? Date.now() - end.getTime() : 0; // the service's clock -> this browser's
    const rates = list(a.requests_per_second), p95 = list(a.p95_ms), scores = Object.entries(obj(a.health_scores));
    const firstPolled = state.history.length ? state.history[0].t : Infinity;
    const points = [];
    list(a.times).forEach((seconds, i) => {
      const t = isNum(seconds) ? seconds * 1000 + shift : NaN;
      if (!(t < firstPolled)) return; // the polls have it
      const pointScores = {};
      for (const [name, values] of scores) if (isNum(list(values)[i])) pointScores[name] = list(values)[i];
      points.push({ t, rate: isNum(rates[i]) ? rates[i] : null, p95: isNum(p95[i]) ? p95[i] : null, scores: pointScores, loaded: true });
    });
    state.history = [...points.sort((x, y) => x.t - y.t), ...state.history];
    trimHistory(Date.now());
    state.trends = {
      source: a.source, points: points.length, note: typeof a.note === "string" ? a.note : null,
      fallback: list(a.errors).some((e) => obj(e).kind === "fallback"),
    };
  }

  function trimHistory(now) {
    while (state.history.length && state.history[0].t < now - HISTORY_MS) state.history.shift();
  }

  function remember(health, summary) {
    const now = Date.now();
    if (state.openedAt === null) state.openedAt = now;
    const h = state.history;
    // A loaded point at or after a polled one cannot be newer than it: the polled one stands.
    while (h.length && h[h.length - 1].loaded && h[h.length - 1].t >= now) h.pop();
    const perf = obj(obj(summary.metrics).performance);
    const scores = {};
    for (const p of list(health.providers).map(obj)) {
      if (typeof p.provider === "string") scores[p.provider] = isNum(p.score) ? p.score : null;
    }
    state.history.push({
      t: now,
      rate: isNum(perf.requests_per_second) ? perf.requests_per_second : null,
      p95: isNum(perf.p95_ms) ? perf.p95_ms : null,
      scores,
    });
    trimHistory(now);
  }

  // ---- Notices --------------------------------------------------------------------------------

  const ERROR_WORDS = {
    unreachable: "cannot be reached",
    timeout: "did not answer within the deadline",
    http_error: "answered with an HTTP error",
    bad_data: "rejected a query",
    execution: "could not run a query",
    backend_timeout: "timed out running a query",
    garbage: "answered with something that is not valid data",
    partial: "answered only in part",
    fallback: "left figures out, filled in from this instance's own registry",
  };

  function backendNotice(answer, what) {
    const errors = list(answer.errors).map(obj);
    if (!answer.stale && !errors.length) return null;
    const notice = el("div", "notice");
    notice.setAttribute("role", "alert");
    const at = parseTime(answer.timestamp);
    const title = answer.stale
      ? `Metrics backend down: the ${what} shows the last good answer${at ? ` (from ${clock(at)})` : ""}, not live figures.`
      : `Metrics backend trouble: the ${what} is incomplete or comes from this instance only.`;
    notice.append(el("strong", null, title));
    const kinds = new Map();
    for (const e of errors) {
      const kind = String(e.kind ?? "error");
      if (!kinds.has(kind)) kinds.set(kind, e);
    }
    if (kinds.size) {
      const items = [...kinds].slice(0, 5).map(([kind, e]) =>
        el("li", null, `The backend ${ERROR_WORDS[kind] || `reported “${kind}”`}`,
          typeof e.message === "string" && e.message ? `: ${e.message}` : "", "."));
      notice.append(el("ul", null, ...items));
    }
    return notice;
  }

  function renderNotices() {
    const notices = [];
    if (state.failure) {
      const notice = el("div", "notice");
      notice.setAttribute("role", "alert");
      const since = state.updatedAt ? `The figures below are from ${clock(state.updatedAt)}.` : "No figures yet.";
      notice.append(el("strong", null, `The service did not answer at ${clock(state.failure.at)}. ${since}`),
        el("span", null, state.failure.message));
      notices.push(notice);
    }
    if (state.summary) notices.push(backendNotice(state.summary, "summary"));
    if (state.health) notices.push(backendNotice(state.health, "health report"));
    // Replaced only when their words change: a new alert node is read out again.
    const fresh = notices.filter(Boolean);
    const words = fresh.map((n) => n.textContent).join("\n");
    if (words !== $("notices").dataset.words) {
      $("notices").replaceChildren(...fresh);
      $("notices").dataset.words = words;
    }
    document.body.classList.toggle("is-stale", Boolean(state.failure && state.updatedAt));
  }

  // ---- Freshness line and controls ----------------------------------------------------------

  function renderFreshness() {
    const parts = [];
    if (state.updatedAt) {
      const age = Math.max(0, Math.round((Date.now() - state.updatedAt) / 1000));
      parts.push(`Updated ${clock(state.updatedAt)} (${age} s ago)`);
    } else {
      parts.push(state.needToken ? "Waiting for the token" : "Loading…");
    }
    if (state.paused) parts.push("refresh paused");
    else if (document.hidden) parts.push("paused while this tab is hidden");
    else parts.push(`refreshing every ${state.intervalS} s`);
    $("freshness").textContent = parts.join(" · ");
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.paused || state.needToken || document.hidden) return;
    state.timer = setTimeout(poll, state.intervalS * 1000);
  }

  function showAuth(reason) {
    state.needToken = true;
    $("auth").hidden = false;
    $("main").hidden = true;
    $("auth-error").textContent = reason === "refused" ? "The service refused that token. Enter it again." : "";
    $("token").focus();
  }

  async function poll() {
    if (state.polling) return;
    state.polling = true;
    clearTimeout(state.timer);
    try {
      // The first poll brings the history along, so the first paint already holds it; a
      // history that fails is said in the charts' note, and the page goes on without it.
      const history = state.trends ? null : getJSON(TRENDS_URL).catch((error) => {
        if (error instanceof AuthError) throw error;
        return { failed: error && error.message ? error.message : String(error) };
      });
      const [health, summary, trends] = await Promise.all([getJSON(HEALTH_URL), getJSON(SUMMARY_URL), history]);
      state.health = obj(health);
      state.summary = obj(summary);
      state.updatedAt = new Date();
      state.failure = null;
      if (trends && trends.failed) state.trends = { failed: trends.failed };
      else if (trends) loadHistory(trends);
      remember(state.health, state.summary);
      renderProviders(state.health, state.summary);
      renderFleet(state.summary);
      renderModels(state.summary);
      renderCharts();
      state.generation += 1;
      document.body.dataset.generation = String(state.generation);
    } catch (error) {
      if (error instanceof AuthError) {
        if (error.message === "refused") token.clear();
        showAuth(error.message);
      } else {
        state.failure = { at: new Date(), message: error && error.message ? error.message : String(error) };
      }
    } finally {
      state.polling = false;
      $("forget").hidden = !token.get();
      renderNotices();
      renderFreshness();
      schedule();
    }
  }

  function setup() {
    let interval = Number(new URLSearchParams(location.search).get("refresh"));
    if (!INTERVALS_S.includes(interval)) {
      try { interval = Number(localStorage.getItem(INTERVAL_KEY)); } catch { interval = NaN; }
    }
    state.intervalS = INTERVALS_S.includes(interval) ? interval : DEFAULT_INTERVAL_S;
    $("interval").value = String(state.intervalS);
    $("interval").addEventListener("change", (event) => {
      state.intervalS = Number(event.target.value) || DEFAULT_INTERVAL_S;
      try { localStorage.setItem(INTERVAL_KEY, String(state.intervalS)); } catch { /* not kept */ }
      renderFreshness();
      schedule();
    });
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").setAttribute("aria-pressed", String(state.paused));
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      renderFreshness();
      if (state.paused) schedule(); else poll();
    });
    $("refresh").addEventListener("click", () => poll());
    $("models-toggle").addEventListener("click", () => {
      state.allModels = !state.allModels;
      if (state.summary) renderModels(state.summary);
    });
    $("forget").addEventListener("click", () => {
      token.clear();
      $("forget").hidden = true;
      state.health = state.summary = null;
      state.updatedAt = null;
      state.history = [];
      state.trends = null;
      state.openedAt = null;
      showAuth("needed");
      renderFreshness();
    });
    $("auth").addEventListener("submit", (event) => {
      event.preventDefault(); // never a native submit: the token must not reach a URL
      const value = $("token").value.trim();
      if (!value) return;
      token.set(value);
      $("token").value = "";
      state.needToken = false;
      $("auth").hidden = true;
      $("main").hidden = false;
      poll();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) schedule(); // clears the timer
      else if (!state.paused && !state.needToken) poll();
      renderFreshness();
    });
    setInterval(renderFreshness, 1000);
    poll();
  }

  setup();
})();
