// The viewer's journey, as a k6 load test: each virtual user (VU) is one viewer who signs in,
// asks license for the title, fetches the key (encrypted titles), the multivariant playlist, one
// media playlist, the init segment and every segment in order, paced by a buffer model, then
// ends its CAS stream session and sends a QoE beacon (client "k6").
//
// The buffer model is labkit.viewers': playback starts when the first segment arrives and plays
// in real time; before each segment the viewer waits while it holds more than MAX_BUFFER_S of
// media; a stall is the playhead reaching the end of what was downloaded before the title's end.
// Every media request carries CMCD (CTA-5004) in the CMCD query argument, as hls.js sends it.
//
// Accounts: the stream limit is 2 streams per account, so each VU plays with an account of its
// own, `<ACCOUNT_PREFIX>-<vu>@loadtest.example`, which it signs up and subscribes (plan
// "premium") on its first iteration; an existing account is reused. Every iteration ends the
// stream session it opened, whatever happened.
//
// Environment (all optional): GATEWAY_URL, TITLE, VUS, DURATION, RAMP, MAX_BUFFER_S,
// ACCOUNT_PREFIX, PASSWORD, BEACONS ("0" to send none), IN_CLUSTER ("1" inside the cluster).
//
//     k6 run -e GATEWAY_URL=http://127.0.0.1:8080 -e VUS=5 viewer-journey.js
//
// In the cluster it runs as the Job k8s/loadtest (k6's Prometheus remote-write output).

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

const env = typeof __ENV === 'undefined' ? {} : __ENV;

// The gateway Service in the namespace ottlab (k8s/base/apis/gateway.yaml): the viewer's origin.
export const GATEWAY_URL = (env.GATEWAY_URL || 'http://gateway:8080').replace(/\/+$/, '');
// License writes the URLs viewers use: the lab's public entry (node ports of the viewer's machine,
// or port-forwards there). Inside the cluster (IN_CLUSTER=1, the Job) a PoP is its own Service,
// http://<pop>:8080 (k8s/base/cdn/pops.yaml), and a key URI's gateway is GATEWAY_URL.
export const IN_CLUSTER = env.IN_CLUSTER === '1';

// ``url`` with the scheme, host and port of ``base`` in the cluster; as it is outside.
export function inCluster(url, base) {
  return IN_CLUSTER ? base.replace(/\/+$/, '') + url.replace(/^[a-z]+:\/\/[^/]+/i, '') : url;
}

// The title the transcode-sample Job publishes (k8s/base/media/transcode-job.yaml).
export const TITLE = env.TITLE || 'sample';
const VUS = positiveInt(env.VUS, 10);
const DURATION = env.DURATION || '5m';
const RAMP = env.RAMP || '30s';
const MAX_BUFFER_S = positiveNumber(env.MAX_BUFFER_S, 12);
const ACCOUNT_PREFIX = env.ACCOUNT_PREFIX || 'k6-viewer';
const PASSWORD = env.PASSWORD || 'k6-loadtest-viewer';
const BEACONS = env.BEACONS !== '0';
const LOGIN_ATTEMPTS = 6; // the gateway limits logins per client address (429 beyond the burst)

// The API paths this script calls (tests/kube/test_loadtest_manifests.py checks each against the
// gateway's routes and the services' own routes).
export const API = {
  signup: ['POST', '/api/auth/signup'],
  login: ['POST', '/api/auth/login'],
  subscribe: ['POST', '/api/subscription/subscriptions'],
  authorize: ['POST', '/api/license/authorizations'],
  endSession: ['DELETE', '/api/cas/sessions/{session_id}'],
  beacons: ['POST', '/api/qoe/beacons'],
};

function api(name, params = {}) {
  return GATEWAY_URL + API[name][1].replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(params[k]));
}

export const options = {
  scenarios: {
    viewers: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: RAMP, target: VUS },
        { duration: DURATION, target: VUS },
      ],
      // An iteration is a whole title: let a viewer watch to the end.
      gracefulRampDown: '60s',
      gracefulStop: '60s',
    },
  },
  // Without `url`: one time series per segment URL would swamp Prometheus; `name` is the kind.
  systemTags: ['proto', 'status', 'method', 'name', 'group', 'check', 'error', 'error_code', 'scenario',
    'expected_response'],
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    viewer_startup: ['p(95)<4000'],
    viewer_start_failures: ['rate<0.01'],
    viewer_rebuffered_sessions: ['rate<0.05'],
  },
};

// Time from the play request (the license request) to the first segment in the buffer.
const startup = new Trend('viewer_startup', true);
const stalls = new Counter('viewer_stalls');
const stallTime = new Trend('viewer_stall_duration', true);
const startFailures = new Rate('viewer_start_failures');
const rebuffered = new Rate('viewer_rebuffered_sessions');
const segmentTime = new Trend('viewer_segment_download', true);

function positiveInt(text, fallback) {
  const n = parseInt(text, 10);
  return n > 0 ? n : fallback;
}

function positiveNumber(text, fallback) {
  const n = parseFloat(text);
  return n > 0 ? n : fallback;
}

// -- pure helpers (node runs them in the offline tests) ------------------------------------------

// `ref` relative to `base` (the playlists name their children relative to themselves).
export function resolve(base, ref) {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref)) return ref;
  const origin = base.match(/^[a-z][a-z0-9+.-]*:\/\/[^/]+/i)[0];
  if (ref.startsWith('/')) return origin + ref;
  const path = base.split(/[?#]/)[0];
  return path.slice(0, path.lastIndexOf('/') + 1) + ref;
}

function attributes(line) {
  const out = {};
  const re = /([A-Z0-9-]+)=("[^"]*"|[^,]*)/g;
  let m;
  while ((m = re.exec(line.slice(line.indexOf(':') + 1))) !== null) {
    out[m[1]] = m[2].replace(/^"|"$/g, '');
  }
  return out;
}

// The variants of a multivariant playlist, in its order: [{uri, bandwidth, codecs}].
export function parseMultivariant(text) {
  const lines = text.split(/\r?\n/).map((l) => l.trim());
  const variants = [];
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i].startsWith('#EXT-X-STREAM-INF:')) continue;
    const attrs = attributes(lines[i]);
    const uri = lines.slice(i + 1).find((l) => l && !l.startsWith('#'));
    if (uri) variants.push({ uri, bandwidth: parseInt(attrs.BANDWIDTH, 10), codecs: attrs.CODECS || '' });
  }
  return variants;
}

// A media playlist: {key: {method, uri} | null, init: uri | null, segments: [{uri, duration}]}.
export function parseMedia(text) {
  const media = { key: null, init: null, segments: [] };
  let duration = null;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('#EXT-X-KEY:')) {
      const attrs = attributes(line);
      media.key = attrs.METHOD === 'NONE' ? null : { method: attrs.METHOD, uri: attrs.URI };
    } else if (line.startsWith('#EXT-X-MAP:')) {
      media.init = attributes(line).URI;
    } else if (line.startsWith('#EXTINF:')) {
      duration = parseFloat(line.slice('#EXTINF:'.length));
    } else if (line && !line.startsWith('#') && duration !== null) {
      media.segments.push({ uri: line, duration });
      duration = null;
    }
  }
  return media;
}

// A CMCD payload (CTA-5004 version 1): keys sorted, strings quoted, true as the bare key.
export function cmcdPayload(data) {
  const tokens = { ot: true, sf: true, st: true };
  return Object.keys(data)
    .filter((k) => data[k] !== undefined && data[k] !== null && data[k] !== false)
    .sort()
    .map((k) => {
      const v = data[k];
      if (v === true) return k;
      if (typeof v === 'string' && !tokens[k]) return `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
      return `${k}=${v}`;
    })
    .join(',');
}

export function withCmcd(url, data) {
  return `${url}${url.includes('?') ? '&' : '?'}CMCD=${encodeURIComponent(cmcdPayload(data))}`;
}

// Media seconds downloaded, played in real time from the first segment on (labkit.viewers' model).
export class Buffer {
  constructor(clock) {
    this.clock = clock; // seconds
    this.downloaded = 0;
    this.played = 0; // media played before `since`
    this.since = null; // when playback (re)started; null while waiting for media
    this.starved = false; // ran dry since the last request (CMCD bs)
    this.stalledAt = null; // when the playhead reached the end of the buffer
  }

  level() {
    if (this.since === null) return this.downloaded - this.played;
    const position = this.played + (this.clock() - this.since);
    if (position >= this.downloaded) {
      this.stalledAt = this.since + (this.downloaded - this.played);
      this.played = this.downloaded;
      this.since = null;
      this.starved = true;
      return 0;
    }
    return this.downloaded - position;
  }

  // Adds a segment; answers the stall it ended, in seconds (0 when none).
  add(seconds) {
    this.level();
    let stalled = 0;
    if (this.stalledAt !== null) {
      stalled = Math.max(0, this.clock() - this.stalledAt);
      this.stalledAt = null;
    }
    this.downloaded += seconds;
    if (this.since === null) this.since = this.clock();
    return stalled;
  }
}

// -- the journey ---------------------------------------------------------------------------------

function now() {
  return Date.now() / 1000;
}

const JSON_BODY = { headers: { 'Content-Type': 'application/json' } };

function bearer(token, name) {
  return { headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, tags: { name } };
}

function errorCode(res) {
  try {
    return res.json('error.code') || '';
  } catch (e) {
    return '';
  }
}

function login(account) {
  const body = JSON.stringify({ email: account.email, password: PASSWORD });
  for (let attempt = 1; ; attempt++) {
    const res = http.post(api('login'), body, { ...JSON_BODY, tags: { name: 'login' } });
    if (res.status === 429 && attempt < LOGIN_ATTEMPTS) {
      sleep(attempt * 0.5);
      continue;
    }
    check(res, { 'login 200': (r) => r.status === 200 });
    return res.status === 200 ? res.json('access_token') : null;
  }
}

let account = null; // per VU: each VU runs in a JS runtime of its own

function ensureAccount(vu) {
  if (account) return account;
  const email = `${ACCOUNT_PREFIX}-${vu}@loadtest.example`;
  const res = http.post(api('signup'),
    JSON.stringify({ email, password: PASSWORD, display_name: `k6 viewer ${vu}` }),
    { ...JSON_BODY, tags: { name: 'signup' }, responseCallback: http.expectedStatuses(201, 409) });
  check(res, { 'signup 201 or 409': (r) => r.status === 201 || r.status === 409 });
  const token = login({ email });
  if (!token) return null;
  const sub = http.post(api('subscribe'), JSON.stringify({ plan: 'premium' }),
    bearer(token, 'subscribe'));
  check(sub, { 'subscribe 201': (r) => r.status === 201 });
  if (sub.status !== 201) return null;
  account = { email, device: `k6-vu-${vu}` };
  return account;
}

// The QoE beacon reason for a refused request.
function reason(kind, res) {
  const code = errorCode(res);
  if (['not_entitled', 'stream_limit', 'device_limit', 'token_expired'].includes(code)) return code;
  if (res.status === 0) return 'network_error';
  if (res.status === 401) return 'unauthorized';
  if (kind === 'license' && res.status === 404) return 'unknown_title';
  if (kind === 'key') return 'key_unavailable';
  if (kind === 'segment' || kind === 'init') return res.status === 404 ? 'segment_not_found' : 'media_error';
  if (kind === 'master' || kind === 'playlist') return 'manifest_error';
  return 'other';
}

// The QoE beacon's error event for a refused request: fatal, and whether the session had started
// (the collector tells a start failure from a playback failure by it).
export function errorEvent(tMs, kind, res, started) {
  return {
    type: 'error', t_ms: tMs, reason: reason(kind, res), fatal: true, started, detail: `${kind} HTTP ${res.status}`,
  };
}

export default function () {
  const vu = typeof __VU === 'undefined' ? 0 : __VU;
  const me = ensureAccount(vu);
  if (!me) {
    startFailures.add(1);
    sleep(5);
    return;
  }
  const access = login(me);
  if (!access) {
    startFailures.add(1);
    sleep(5);
    return;
  }

  const t0 = now();
  const events = [{ type: 'play', t_ms: 0 }];
  const ms = () => Math.round((now() - t0) * 1000);
  let sessionId = null;
  let pop = 'unknown';
  let started = false;
  let stalledMs = 0;
  let playedFrom = null;
  let failure = null;
  let br = 0;

  const fail = (kind, res) => {
    const event = errorEvent(ms(), kind, res, started);
    failure = event.reason;
    events.push(event);
  };

  try {
    const lic = http.post(api('authorize'),
      JSON.stringify({ title_id: TITLE, device_id: me.device }), bearer(access, 'license'));
    if (!check(lic, { 'license 201': (r) => r.status === 201 })) {
      fail('license', lic);
      return;
    }
    const grant = lic.json();
    sessionId = grant.session_id;
    const chosen = grant.playback[vu % grant.playback.length];
    const playback = { ...chosen, url: inCluster(chosen.url, `http://${chosen.pop}:8080`) };
    pop = playback.pop;
    const sid = sessionId;
    const buffer = new Buffer(now);
    let mtp = null;

    const get = (kind, url, extra, params) => {
      const playing = buffer.downloaded > 0;
      const ahead = buffer.level();
      const starved = buffer.starved;
      buffer.starved = false;
      const data = {
        sid, cid: TITLE, sf: 'h', st: 'v', mtp,
        bl: playing ? Math.round(ahead * 10) * 100 : null,
        bs: starved || null,
        su: !playing || starved || null,
        ...extra,
      };
      const res = http.get(withCmcd(url, data), { tags: { name: kind }, ...params });
      check(res, { [`${kind} 200`]: (r) => r.status === 200 });
      return res;
    };

    const master = get('master', playback.url, { ot: 'm' });
    if (master.status !== 200) return fail('master', master);
    const variants = parseMultivariant(master.body);
    if (!variants.length) return fail('master', master);
    const variant = variants[(vu - 1 + variants.length) % variants.length];
    br = Math.round(variant.bandwidth / 1000);
    const tb = Math.max(...variants.map((v) => Math.round(v.bandwidth / 1000)));
    const ot = variant.codecs.includes('mp4a') ? 'av' : 'v';
    const mediaUrl = resolve(playback.url, variant.uri);
    const playlist = get('playlist', mediaUrl, { ot: 'm' });
    if (playlist.status !== 200) return fail('playlist', playlist);
    const media = parseMedia(playlist.body);

    if (media.key) {
      const key = http.get(inCluster(media.key.uri, GATEWAY_URL), {
        headers: { Authorization: `Bearer ${grant.authorization}` }, tags: { name: 'key' }, responseType: 'binary',
      });
      const ok = check(key, {
        'key 200': (r) => r.status === 200,
        'key is 16 bytes': (r) => r.body !== null && r.body.byteLength === 16,
      });
      if (!ok) return fail('key', key);
    }
    if (media.init) {
      const init = get('init', resolve(mediaUrl, media.init), { ot: 'i', br, tb }, { responseType: 'none' });
      if (init.status !== 200) return fail('init', init);
    }
    for (const segment of media.segments) {
      const ahead = buffer.level();
      if (ahead > MAX_BUFFER_S) sleep(ahead - MAX_BUFFER_S);
      const res = get('segment', resolve(mediaUrl, segment.uri),
        { ot, br, tb, d: Math.round(segment.duration * 1000) }, { responseType: 'none' });
      if (res.status !== 200) return fail('segment', res);
      segmentTime.add(res.timings.duration);
      const bytes = parseInt(res.headers['Content-Length'] || '0', 10);
      if (bytes > 0 && res.timings.duration > 0) {
        mtp = Math.max(100, Math.round((bytes * 8) / res.timings.duration / 100) * 100); // kbit/s
      }
      const stalled = buffer.add(segment.duration);
      if (!started) {
        started = true;
        playedFrom = now();
        startup.add((now() - t0) * 1000);
        events.push({ type: 'start', t_ms: ms(), startup_ms: ms(), bitrate_kbps: br });
      } else if (stalled > 0) {
        stalls.add(1);
        stallTime.add(stalled * 1000);
        stalledMs += Math.round(stalled * 1000);
        if (events.length < 196) events.push({ type: 'stall', t_ms: ms(), duration_ms: Math.round(stalled * 1000) });
      }
    }
    // Watch what is left in the buffer, as a viewer would, holding the stream session.
    sleep(buffer.level());
  } finally {
    startFailures.add(!started);
    if (started) rebuffered.add(stalledMs > 0);
    if (sessionId) {
      const end = http.del(api('endSession', { session_id: sessionId }), null,
        bearer(access, 'end_session'));
      check(end, { 'end session 204': (r) => r.status === 204 });
    }
    if (BEACONS) {
      const playedMs = started ? Math.max(0, Math.round((now() - playedFrom) * 1000) - stalledMs) : 0;
      if (started) events.push({ type: 'progress', t_ms: ms(), played_ms: playedMs, bitrate_kbps: br, dropped_frames: 0 });
      events.push({ type: 'end', t_ms: ms(), reason: failure ? 'error' : 'ended', started, played_ms: playedMs,
        stalled_ms: stalledMs });
      const beacon = http.post(api('beacons'), JSON.stringify({
        v: 1, session: sessionId || `k6-${vu}-${Date.now()}`, title: TITLE, pop, client: 'k6', events,
      }), { ...JSON_BODY, tags: { name: 'beacon' } });
      check(beacon, { 'beacon accepted': (r) => r.status >= 200 && r.status < 300 });
    }
  }
}
