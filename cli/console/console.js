// The omniedge web console: fills /console from the agent's own JSON and event stream.
// Everything shown goes through textContent, never parsed as markup: an event's text stays text.
'use strict';

(function () {
  const STATUS_EVERY_MS = 2000;
  const HISTORY_EVERY_MS = 5000;
  const MAX_EVENT_ROWS = 100;

  const byId = (id) => document.getElementById(id);

  // Shows `text` in #id and keeps the exact figure in data-value (what tests compare).
  function show(id, text, value) {
    const el = byId(id);
    if (!el) {
      return;
    }
    el.textContent = text === undefined || text === null || text === '' ? '—' : String(text);
    if (value !== undefined) {
      el.dataset.value = String(value);
    }
  }

  function number(n) {
    return typeof n === 'number' ? n.toLocaleString('en-US') : '—';
  }

  function bytes(n) {
    if (typeof n !== 'number') {
      return '—';
    }
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let u = 0;
    while (v >= 1024 && u < units.length - 1) {
      v /= 1024;
      u += 1;
    }
    return (u === 0 ? String(v) : v.toFixed(1)) + ' ' + units[u];
  }

  function duration(seconds) {
    if (typeof seconds !== 'number' || seconds < 0) {
      return '—';
    }
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = Math.floor(seconds % 60);
    if (d > 0) {
      return d + 'd ' + h + 'h';
    }
    if (h > 0) {
      return h + 'h ' + m + 'm';
    }
    return m > 0 ? m + 'm ' + s + 's' : s + 's';
  }

  function badge(id, text, good, bad) {
    const el = byId(id);
    if (!el) {
      return;
    }
    show(id, text, text);
    el.classList.remove('ok', 'bad', 'warn');
    if (good.includes(text)) {
      el.classList.add('ok');
    } else if (bad.includes(text)) {
      el.classList.add('bad');
    } else {
      el.classList.add('warn');
    }
  }

  function get(obj, path, fallback) {
    let v = obj;
    for (const key of path) {
      if (v === null || typeof v !== 'object' || !(key in v)) {
        return fallback;
      }
      v = v[key];
    }
    return v;
  }

  async function fetchJson(path) {
    const res = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
    if (!res.ok) {
      throw new Error(path + ' answered ' + res.status);
    }
    return res.json();
  }

  function fetchFailed(err) {
    const el = byId('fetch-error');
    el.textContent = 'cannot reach the agent: ' + err.message;
    el.hidden = false;
  }

  function cell(row, text) {
    const td = document.createElement('td');
    td.textContent = text === undefined || text === null || text === '' ? '—' : String(text);
    row.appendChild(td);
    return td;
  }

  function renderDrivers(drivers) {
    const body = byId('drivers-body');
    const rows = [];
    for (const d of Array.isArray(drivers) ? drivers : []) {
      const tr = document.createElement('tr');
      tr.dataset.driver = String(d.name);
      tr.dataset.state = String(d.state);
      cell(tr, d.name);
      const state = document.createElement('td');
      tr.appendChild(state);
      const span = document.createElement('span');
      span.className = 'badge ' + (d.state === 'running' ? 'ok' : d.state === 'failing' ? 'bad' : 'warn');
      span.textContent = String(d.state);
      state.appendChild(span);
      cell(tr, typeof d.errors === 'number' ? d.errors : 0);
      cell(tr, d.last_error);
      const counters = d.counters && typeof d.counters === 'object' ? d.counters : {};
      const parts = [];
      if (d.listen) {
        parts.push('listen ' + d.listen);
      }
      for (const [k, v] of Object.entries(counters)) {
        parts.push(k + ' ' + (typeof v === 'number' ? number(v) : String(v)));
      }
      cell(tr, parts.join(', '));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function renderStatus(s) {
    show('store-id', s.store_id, s.store_id);
    badge('agent-state', s.daemon, ['running'], ['down']);
    show('agent-version', s.version, s.version);
    show('uptime', duration(s.uptime_s), s.uptime_s);
    show('config-version', s.config_version, s.config_version);
    show('updated-at', new Date().toLocaleTimeString());

    const mqtt = get(s, ['uplink', 'mqtt'], {});
    badge('mqtt-state', mqtt.state, ['connected'], ['disconnected']);
    show('mqtt-since', mqtt.since, mqtt.since);
    show('mqtt-node', mqtt.node || mqtt.url, mqtt.node || mqtt.url);
    show('mqtt-last-error', mqtt.last_error_resolved ? '' : mqtt.last_error, mqtt.last_error);
    badge('https-state', get(s, ['uplink', 'https', 'state'], ''), ['connected', 'idle', 'sending'],
          ['failing', 'unavailable']);

    const q = s.queue || {};
    show('queue-high', number(q.high), q.high);
    show('queue-normal', number(q.normal), q.normal);
    show('queue-low', number(q.low), q.low);
    show('queue-total', number(q.pending), q.pending);
    show('queue-bytes', bytes(q.bytes), q.bytes);
    show('queue-oldest-age', q.pending > 0 ? duration(q.oldest_pending_age_s) : 'nothing pending',
         q.oldest_pending_age_s);
    const quarantined = get(s, ['quarantine', 'events'], 0);
    show('quarantine-events', number(quarantined), quarantined);

    const counters = s.counters || {};
    show('counter-appended', number(counters.appended), counters.appended);
    show('counter-delivered', number(counters.delivered), counters.delivered);
    const rates = s.rates || {};
    show('rate-ingest', (rates.ingest_per_s || 0).toFixed(1), rates.ingest_per_s);
    show('rate-delivery', (rates.delivery_per_s || 0).toFixed(1), rates.delivery_per_s);

    renderDrivers(s.drivers);
    byId('fetch-error').hidden = true;
    document.body.dataset.ready = '1';
  }

  // ---- plots ----------------------------------------------------------------------------

  // The plots span what the samples kept can cover: an hour at the default interval.
  let spanMs = 3600 * 1000;

  function drawPlot(canvas, times, series, nowMs) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 56;
    const right = 10;
    const top = 10;
    const bottom = 24;
    const w = width - left - right;
    const h = height - top - bottom;
    const span = spanMs;
    const x = (t) => left + w * (1 - (nowMs - t) / span);
    let max = 0;
    for (const s of series) {
      for (const v of s.values) {
        max = Math.max(max, v);
      }
    }
    max = max > 0 ? max * 1.1 : 1;
    const y = (v) => top + h * (1 - v / max);

    g.strokeStyle = '#d9dee5';
    g.fillStyle = '#5b6573';
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i += 1) {
      const v = (max * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(left + w, yy);
      g.stroke();
      g.textAlign = 'right';
      g.fillText(v >= 100 ? Math.round(v).toString() : v.toFixed(1), left - 6, yy + 4);
    }
    g.textAlign = 'center';
    for (let i = 6; i >= 0; i -= 1) {
      const ago = (span * i) / 6 / 1000;
      const label = ago === 0 ? 'now'
        : ago >= 60 ? '-' + Math.round(ago / 60) + ' min' : '-' + Math.round(ago) + ' s';
      g.fillText(label, x(nowMs - ago * 1000), height - 6);
    }
    for (const s of series) {
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      let started = false;
      for (let i = 0; i < s.values.length; i += 1) {
        const t = s.times[i];
        if (nowMs - t > span) {
          continue;
        }
        if (!started) {
          g.moveTo(x(t), y(s.values[i]));
          started = true;
        } else {
          g.lineTo(x(t), y(s.values[i]));
        }
      }
      g.stroke();
    }
    if (times.length === 0) {
      g.textAlign = 'center';
      g.fillStyle = '#5b6573';
      g.fillText('no samples yet', left + w / 2, top + h / 2);
    }
  }

  function renderHistory(hist) {
    const s = hist.samples || {};
    const at = s.at_ms || [];
    const ingested = s.ingested || [];
    const delivered = s.delivered || [];
    const queue = s.queue || [];
    show('sample-interval', hist.interval_s, hist.interval_s);
    show('sample-count', at.length, at.length);
    if (hist.interval_s > 0 && hist.capacity > 0) {
      spanMs = Math.min(3600, hist.interval_s * hist.capacity) * 1000;
    }
    // Rates are differences of totals between samples.
    const rateTimes = [];
    const ingestRate = [];
    const deliveryRate = [];
    let lastDelivery = 0;
    for (let i = 1; i < at.length; i += 1) {
      const dt = (at[i] - at[i - 1]) / 1000;
      if (dt <= 0) {
        continue;
      }
      rateTimes.push(at[i]);
      ingestRate.push(Math.max(0, ingested[i] - ingested[i - 1]) / dt);
      deliveryRate.push(Math.max(0, delivered[i] - delivered[i - 1]) / dt);
      if (delivered[i] > delivered[i - 1]) {
        lastDelivery = at[i];
      }
    }
    const now = Date.now();
    drawPlot(byId('plot-rates'), rateTimes, [
      { times: rateTimes, values: ingestRate, color: '#2f6fdb' },
      { times: rateTimes, values: deliveryRate, color: '#1f9d55' },
    ], now);
    drawPlot(byId('plot-queue'), at, [{ times: at, values: queue, color: '#d9822b' }], now);
    show('last-delivery', lastDelivery > 0
      ? new Date(lastDelivery).toLocaleTimeString() + ' (' + duration((now - lastDelivery) / 1000) + ' ago)'
      : 'none in the samples kept', lastDelivery);
  }

  // ---- live events ----------------------------------------------------------------------

  function addEvent(e) {
    const body = byId('events-body');
    const tr = document.createElement('tr');
    tr.dataset.seq = String(e.seq);
    tr.dataset.type = String(e.type);
    cell(tr, e.seq);
    cell(tr, e.occurred_at);
    cell(tr, e.type);
    cell(tr, e.source);
    cell(tr, e.id);
    cell(tr, e.customer ? 'yes' : 'no');
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > MAX_EVENT_ROWS) {
      body.deleteRow(body.rows.length - 1);
    }
    body.dataset.count = String(body.rows.length);
    body.dataset.lastSeq = String(Math.max(Number(body.dataset.lastSeq || 0), e.seq));
  }

  function follow() {
    const live = byId('events-live');
    const source = new EventSource('/console/events');
    source.addEventListener('open', () => {
      live.textContent = 'live';
      live.className = 'badge ok';
    });
    source.addEventListener('error', () => {
      live.textContent = 'reconnecting';
      live.className = 'badge warn';
    });
    source.addEventListener('recent', (msg) => {
      try {
        addEvent(JSON.parse(msg.data));
      } catch (err) {
        // A frame that is not JSON is skipped; the next ones still show.
      }
    });
  }

  async function statusLoop() {
    try {
      renderStatus(await fetchJson('/console/status.json'));
    } catch (err) {
      fetchFailed(err);
    }
    setTimeout(statusLoop, STATUS_EVERY_MS);
  }

  async function historyLoop() {
    try {
      renderHistory(await fetchJson('/console/history.json'));
    } catch (err) {
      fetchFailed(err);
    }
    setTimeout(historyLoop, HISTORY_EVERY_MS);
  }

  document.addEventListener('DOMContentLoaded', () => {
    statusLoop();
    historyLoop();
    follow();
  });
})();
