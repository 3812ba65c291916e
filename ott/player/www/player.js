// OTT Lab web player: sign in, authorize a title, play it with hls.js from a CDN PoP, and report QoE.
//
// Everything but the media is same-origin with this page (the API gateway): sign-in, the playback
// authorization, the AES-128 keys, the CAS stream session and the QoE beacons. Media comes from the
// PoP the authorization signed a URL for (cross-origin; the edges allow it).
//
// Page URL: /player/?title=<id>&pop=<edge-N>&beacon_s=<seconds>&buffer_s=<seconds>
//   buffer_s  the forward buffer hls.js fills before it waits (default: hls.js' own, 30 s): a short one
//             fetches each segment just in time, so a slower network shows at once (switches, stalls)
//
// Test hook: window.ottPlayer = {state, startupMs, failure, events, stop()}
//   state     idle | authorizing | loading | playing | stalled | ended | failed
//   startupMs from the Play click to the first presented frame with the playhead moving
//   failure   {reason, message} of a fatal failure, or null
//   events    every beacon event of the current session, as sent
//   stop()    ends the session as a viewer leaving would (end beacon "exit", stream session closed)

/* global Hls */

const params = new URLSearchParams(location.search);
const BEACON_URL = "/api/qoe/beacons";
const BEACON_S = Math.max(1, Number(params.get("beacon_s")) || 10);
const BUFFER_S = Number(params.get("buffer_s")) > 0 ? Number(params.get("buffer_s")) : null;
// CAS says how often to heartbeat its stream sessions (heartbeat_interval_s); until it has, or when it
// does not say, every 10 s (CAS closes a session after 30 s without one by default).
const DEFAULT_HEARTBEAT_S = 10;
const STATS_MS = 250;
const MAX_EVENTS_PER_BEACON = 200;
const FRAG_ERROR_RETRY = { maxNumRetry: 3, retryDelayMs: 500, maxRetryDelayMs: 2000 };
// ott.models.TITLE_ID_PATTERN (tests/unit/test_player_page.py keeps the two equal).
const TITLE_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;

const $ = (id) => document.getElementById(id);
const video = $("video");

// Readable messages for the API's refusal codes; the service's own message is appended.
const DENIALS = {
  not_entitled: () => "Your plan does not include this title. Upgrade your subscription to watch it.",
  stream_limit: (error) => {
    const screens = error.details?.active?.length ?? error.details?.limit;
    return `You are already watching on ${screens ?? "too many"} screens. Stop one of them, then press Play again.`;
  },
  device_limit: (error) =>
    `This account has reached its limit of ${error.details?.limit ?? "allowed"} devices. Play on one of them.`,
  outside_window: (error) => `Playback is allowed between ${error.details?.window ?? "set hours"} UTC only.`,
  unknown_title: () => "There is no such title in the catalog. Check its id.",
  unauthorized: () => "Your sign-in has expired. Sign in again.",
};

// The beacon reasons (ott/qoe.py) for API refusal codes that differ from them.
const REASON_OF_CODE = {
  not_entitled: "not_entitled", stream_limit: "stream_limit", device_limit: "device_limit",
  unknown_title: "unknown_title", not_found: "unknown_title", unauthorized: "unauthorized",
  token_expired: "unauthorized", invalid_token: "unauthorized", outside_window: "other",
};

// ----------------------------------------------------------------------------------------------
// Test hook and the little state every part shares

const ottPlayer = (window.ottPlayer = {
  state: "idle", startupMs: null, failure: null, events: [], stop: () => Promise.resolve(),
});

// The access token lives 15 min (OTT_ACCESS_TTL): the refresh token trades for a new pair (see authed()).
const auth = {
  accessToken: sessionStorage.getItem("ottlab.access_token"),
  refreshToken: sessionStorage.getItem("ottlab.refresh_token"),
  email: sessionStorage.getItem("ottlab.email"),
  refreshing: null, // the refresh on its way: concurrent 401s share it (a refresh token works once)
};

function keepTokens(tokens) {
  auth.accessToken = tokens?.access_token ?? null;
  auth.refreshToken = tokens?.refresh_token ?? null;
  for (const [key, value] of [["ottlab.access_token", auth.accessToken], ["ottlab.refresh_token", auth.refreshToken]]) {
    if (value) sessionStorage.setItem(key, value);
    else sessionStorage.removeItem(key);
  }
}

/** A device id kept across visits: CAS counts devices per account. */
function deviceId() {
  let id = localStorage.getItem("ottlab.device_id");
  if (!id) {
    id = `browser-${crypto.randomUUID()}`;
    localStorage.setItem("ottlab.device_id", id);
  }
  return id;
}

/** An error of the platform's APIs: status, stable code, message and details from the JSON body. */
class ApiError extends Error {
  constructor(status, body) {
    const error = body?.error ?? {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || (status === 401 ? "unauthorized" : "http_error");
    this.details = error.details;
  }
}

async function api(method, path, { body, token, keepalive = false } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method, headers, keepalive, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null; // an HTML error page of a proxy: the status says enough
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

/** A new token pair for the refresh token; false when there is none or it is refused (sign in again). */
function refreshTokens() {
  if (!auth.refreshToken) return Promise.resolve(false);
  auth.refreshing ??= api("POST", "/api/auth/refresh", { body: { refresh_token: auth.refreshToken } })
    .then((tokens) => {
      keepTokens(tokens);
      return true;
    })
    .catch((error) => {
      console.warn("could not refresh the sign-in:", error);
      if (error instanceof ApiError && error.status === 401) keepTokens(null);
      return false;
    })
    .finally(() => {
      auth.refreshing = null;
    });
  return auth.refreshing;
}

/** An API call with the access token; on a 401 the token is refreshed and the call tried once more. */
async function authed(method, path, options = {}) {
  const token = auth.accessToken;
  try {
    return await api(method, path, { ...options, token });
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    // Another call may have refreshed meanwhile: then only the retry is needed.
    if (auth.accessToken === token && !(await refreshTokens())) throw error;
    return api(method, path, { ...options, token: auth.accessToken });
  }
}

function setState(state) {
  ottPlayer.state = state;
  $("stat-state").textContent = state;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

// ----------------------------------------------------------------------------------------------
// Sign-in

function showSignedIn() {
  $("who").textContent = auth.accessToken ? `Signed in as ${auth.email}` : "";
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = $("email").value.trim();
  $("signin").disabled = true;
  try {
    const tokens = await api("POST", "/api/auth/login", { body: { email, password: $("password").value } });
    keepTokens(tokens);
    auth.email = email;
    sessionStorage.setItem("ottlab.email", email);
    showMessage("");
  } catch (error) {
    keepTokens(null);
    showMessage(error instanceof ApiError && error.status === 401
      ? "Sign-in failed: wrong e-mail or password."
      : `Sign-in failed: ${error.message}`);
  } finally {
    $("signin").disabled = false;
    showSignedIn();
  }
});

// ----------------------------------------------------------------------------------------------
// One playback session: from the Play click to its end beacon

class Session {
  constructor(title) {
    this.t0 = performance.now(); // the Play click: startup is measured from here
    this.title = title;
    // ONE id for the whole playback: the first authorization's session id (a random one for a refused
    // play). Beacons and CMCD's sid keep it after a re-authorization, so the collector and the edge logs
    // see one session; the CAS stream session heartbeated and ended is always the current grant's.
    this.id = crypto.randomUUID();
    this.pop = "unknown";
    this.grant = null; // the playback authorization: {authorization, expires_at, session_id, playback: [...]}
    // Recovery budgets, both reset once a fragment loads after the recovery: PoPs tried since then,
    // and whether the grant was renewed since then (at most one renewal per fragment loaded: no loop).
    this.triedPops = new Set();
    this.reauthorized = false;
    this.heartbeatS = DEFAULT_HEARTBEAT_S;
    this.heartbeatTimer = null;
    this.onTime = null; // the fallback startup listener (no requestVideoFrameCallback)
    this.hls = null;
    this.started = false;
    this.over = false;
    this.pending = [];
    // Beacons wait for the authorization: then the session id is the license's, as in CMCD.
    this.holding = true;
    this.rung = null; // the level being played: {height, kbps}
    this.stallSince = null;
    this.stalls = 0;
    this.mediaRecovered = false;
    this.reported = new Set(); // non-fatal reasons already sent for this session
    // Accounting for progress and end: time playing, time-weighted bitrate, stalled time, dropped frames.
    this.playingSince = null;
    this.playedMs = 0;
    this.intervalPlayedMs = 0;
    this.intervalKbitMs = 0;
    this.stalledMs = 0;
    this.droppedTotal = 0;
    this.droppedReported = 0;
    this.droppedBase = 0;
    this.timers = [];
    this.closing = Promise.resolve();
    ottPlayer.events = [];
    ottPlayer.startupMs = null;
    ottPlayer.failure = null;
  }

  now() {
    return Math.max(0, Math.round(performance.now() - this.t0));
  }

  // -- beacons ----------------------------------------------------------------------------------

  emit(type, fields = {}) {
    if (this.over && type !== "end") return;
    const event = { type, t_ms: this.now(), ...fields };
    ottPlayer.events.push(event);
    this.pending.push(event);
    // Events of the same turn (a final progress and the end) travel together.
    if (this.pending.length === 1) queueMicrotask(() => this.flush());
  }

  beaconBody(events) {
    return JSON.stringify({
      v: 1, session: this.id, title: TITLE_ID.test(this.title) ? this.title : "unknown",
      pop: this.pop, client: "browser", events,
    });
  }

  /** Send the pending events; resolves when the collector has them (or refused them). */
  flush({ unloading = false } = {}) {
    if (this.holding && !unloading) return Promise.resolve();
    const sent = [];
    while (this.pending.length) {
      const body = this.beaconBody(this.pending.splice(0, MAX_EVENTS_PER_BEACON));
      // A page being hidden may not finish a fetch: sendBeacon is made for that (text/plain string).
      if (unloading && navigator.sendBeacon(BEACON_URL, body)) continue;
      sent.push(fetch(BEACON_URL, { method: "POST", headers: { "Content-Type": "application/json" }, body,
        keepalive: true })
        .then((response) => {
          if (!response.ok) console.warn(`QoE beacon refused: HTTP ${response.status}`);
        })
        .catch((error) => console.warn("QoE beacon not sent:", error)));
    }
    return Promise.all(sent);
  }

  // -- time accounting --------------------------------------------------------------------------

  /** Fold the time played since the last call into the totals (weighted by the rung then played). */
  account() {
    const now = performance.now();
    if (this.playingSince !== null) {
      const ms = now - this.playingSince;
      this.playedMs += ms;
      this.intervalPlayedMs += ms;
      this.intervalKbitMs += ms * (this.rung?.kbps ?? 0);
      this.playingSince = now;
    }
    const quality = video.getVideoPlaybackQuality?.();
    if (quality) {
      // A new media source (another PoP, a new authorization) restarts the element's counter.
      if (quality.droppedVideoFrames < this.droppedBase) this.droppedBase = 0;
      this.droppedTotal += quality.droppedVideoFrames - this.droppedBase;
      this.droppedBase = quality.droppedVideoFrames;
    }
  }

  setPlaying(playing) {
    this.account();
    this.playingSince = playing ? performance.now() : null;
  }

  progress() {
    this.account();
    if (!this.started || this.intervalPlayedMs < 1) return;
    const kbps = Math.round(this.intervalKbitMs / this.intervalPlayedMs);
    this.emit("progress", {
      played_ms: Math.round(this.intervalPlayedMs), bitrate_kbps: kbps,
      dropped_frames: Math.max(0, this.droppedTotal - this.droppedReported),
    });
    this.intervalPlayedMs = 0;
    this.intervalKbitMs = 0;
    this.droppedReported = this.droppedTotal;
  }

  // -- stalls -----------------------------------------------------------------------------------

  stallBegins() {
    if (!this.started || this.over || this.stallSince !== null) return;
    this.setPlaying(false);
    this.stallSince = performance.now();
    setState("stalled");
  }

  stallEnds() {
    if (this.stallSince === null) return;
    const ms = performance.now() - this.stallSince;
    this.stallSince = null;
    this.stalls += 1;
    this.stalledMs += ms;
    this.emit("stall", { duration_ms: Math.round(ms) });
  }

  // -- the play flow ----------------------------------------------------------------------------

  async play() {
    this.emit("play");
    setState("authorizing");
    showMessage("");
    if (!TITLE_ID.test(this.title)) {
      this.fail("unknown_title", `"${this.title}" is not a title id: lower-case letters, digits and dashes.`);
      return;
    }
    if (!auth.accessToken && !auth.refreshToken) {
      this.fail("unauthorized", "Sign in first, then press Play.");
      return;
    }
    try {
      await this.authorize();
      this.id = this.grant.session_id;
    } catch (error) {
      this.refused(error);
      return;
    } finally {
      this.holding = false;
      this.flush();
    }
    if (this.over) {
      this.endStreamSession(); // the viewer left while the authorization was on its way
      return;
    }
    const wanted = params.get("pop");
    const first = this.grant.playback.find((p) => p.pop === wanted) ?? this.grant.playback[0];
    if (!first) {
      this.fail("pop_unreachable", "No CDN PoP is available for this title right now. Try again later.");
      return;
    }
    this.timers.push(setInterval(() => this.progress(), BEACON_S * 1000));
    this.scheduleHeartbeat();
    this.load(first, 0);
    this.learnHeartbeatInterval(); // meanwhile: the first heartbeat is seconds away
  }

  async authorize() {
    this.grant = await authed("POST", "/api/license/authorizations", {
      body: { title_id: this.title, device_id: deviceId() },
    });
  }

  /** Whether the playback authorization is past its expires_at (the key would be refused: 401). */
  grantExpired() {
    return Boolean(this.grant?.expires_at) && Date.parse(this.grant.expires_at) <= Date.now();
  }

  /** A new grant in place of the current one; false (the session failed) when it is refused. */
  async renewGrant() {
    // The old stream session ends before the new one opens: the account's stream limit counts both.
    await this.endStreamSession();
    try {
      await this.authorize();
    } catch (error) {
      this.refused(error);
      return false;
    }
    if (this.over) {
      this.endStreamSession(); // the viewer left while the authorization was on its way
      return false;
    }
    this.learnHeartbeatInterval();
    return true;
  }

  /** A refusal of the authorization (or a network failure reaching it): a video start failure. */
  refused(error) {
    if (!(error instanceof ApiError)) {
      this.fail("network_error", `The platform could not be reached: ${error.message}`);
      return;
    }
    const readable = DENIALS[error.code]?.(error) ?? "Playback was refused.";
    const reason = REASON_OF_CODE[error.code] ?? (error.status === 401 ? "unauthorized" : "other");
    if (reason === "unauthorized") {
      keepTokens(null);
      showSignedIn();
    }
    this.fail(reason, `${readable} (${error.message})`, error.code);
  }

  /** Start (or resume at ``position``) hls.js on one PoP's signed URL. */
  load(entry, position) {
    this.triedPops.add(entry.pop);
    this.pop = entry.pop;
    $("stat-pop").textContent = entry.pop;
    if (!this.started) setState("loading");
    const hls = new Hls({
      startPosition: position > 0 ? position : -1,
      // hls.js buffers up to maxMaxBufferLength when segments are small: both bound the buffer.
      ...(BUFFER_S ? { maxBufferLength: BUFFER_S, maxMaxBufferLength: BUFFER_S } : {}),
      // CTA-5004 data on every media request: the edge logs it by session and title.
      cmcd: { sessionId: this.id, contentId: this.title },
      // A missing segment is retried (on every rung) for a few seconds, not hls.js' default ~30 s:
      // a viewer does not wait that long in front of a frozen picture.
      fragLoadPolicy: { default: { ...Hls.DefaultConfig.fragLoadPolicy.default, errorRetry: FRAG_ERROR_RETRY } },
      // The key URI is same-origin (the gateway): only those requests get the playback authorization.
      xhrSetup: (xhr, url) => {
        xhr.open("GET", url, true);
        if (isKeyUrl(url)) xhr.setRequestHeader("Authorization", `Bearer ${this.grant.authorization}`);
      },
    });
    this.hls = hls;
    hls.on(Hls.Events.MANIFEST_PARSED, () => this.startVideo());
    hls.on(Hls.Events.FRAG_CHANGED, (_, data) => this.rungChanged(hls, data.frag.level));
    hls.on(Hls.Events.FRAG_BUFFERED, (_, data) => {
      // Until playback enters a fragment (FRAG_CHANGED), the first buffered one is the rung.
      if (this.rung === null && data.frag.type === "main") this.rungChanged(hls, data.frag.level);
    });
    hls.on(Hls.Events.FRAG_LOADED, (_, data) => {
      if (hls === this.hls && data.frag.type === "main") this.fragmentLoaded();
    });
    hls.on(Hls.Events.ERROR, (_, data) => this.hlsError(hls, data));
    hls.loadSource(entry.url);
    hls.attachMedia(video);
  }

  startVideo() {
    video.play().catch((error) => {
      // Without a user gesture and autoplay permission, only muted playback may start.
      if (error.name === "NotAllowedError" && !video.muted) {
        video.muted = true;
        this.startVideo();
      }
    });
    if (!this.started) this.watchFirstFrame();
  }

  /**
   * Startup ends at the SECOND presented frame: the first one whose media time moved past the first
   * frame presented. That is "the first rendered frame with the playhead moving": Chromium presents the
   * first frame as soon as it is decoded, before the clock runs (still paused, or waiting for play()
   * or for data with `paused` already false), so neither that frame nor "not paused" proves motion;
   * a frame with a later media time does. It costs one frame interval (40 ms at 25 fps) over the
   * first frame.
   */
  watchFirstFrame() {
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) {
      if (this.onTime) return;
      this.onTime = () => {
        if (video.currentTime > 0 && !video.paused) {
          this.stopWatchingTime();
          this.started || this.over || this.start(performance.now());
        }
      };
      video.addEventListener("timeupdate", this.onTime);
      return;
    }
    let firstMediaTime = null;
    const onFrame = (now, metadata) => {
      if (this.over || this.started) return;
      if (firstMediaTime === null) firstMediaTime = metadata.mediaTime;
      if (!video.paused && metadata.mediaTime > firstMediaTime) {
        this.start(metadata.presentationTime || now);
      } else {
        video.requestVideoFrameCallback(onFrame);
      }
    };
    video.requestVideoFrameCallback(onFrame);
  }

  start(at) {
    this.started = true;
    ottPlayer.startupMs = Math.max(0, Math.round(at - this.t0));
    $("stat-startup").textContent = `${ottPlayer.startupMs} ms`;
    // The rung being played; before any fragment was buffered (not seen), the first rung hls.js loads.
    const first = this.hls?.levels[Math.max(0, this.hls.firstLevel)];
    const kbps = this.rung?.kbps ?? (first ? Math.max(1, Math.round(first.bitrate / 1000)) : 0);
    this.emit("start", { startup_ms: ottPlayer.startupMs, bitrate_kbps: kbps });
    setState("playing");
    this.setPlaying(true);
  }

  stopWatchingTime() {
    if (this.onTime) video.removeEventListener("timeupdate", this.onTime);
    this.onTime = null;
  }

  rungChanged(hls, levelIndex) {
    const level = hls.levels[levelIndex];
    if (!level) return;
    const rung = { height: level.height, kbps: Math.max(1, Math.round(level.bitrate / 1000)) };
    const before = this.rung;
    if (before && before.kbps === rung.kbps) return;
    this.account(); // the time until now was played at the old rung
    this.rung = rung;
    showRung(rung); // at once, not at the overlay's next refresh: it matches the switch beacon
    if (before) this.emit("switch", { from_kbps: before.kbps, to_kbps: rung.kbps });
  }

  // -- faults -----------------------------------------------------------------------------------

  hlsError(hls, data) {
    if (hls !== this.hls || this.over) return; // a late event of a player already replaced
    const status = data.response?.code;
    const details = data.details;
    console.info(`hls.js error: ${details} fatal=${data.fatal} status=${status} t=${this.now()} ms`);
    const E = Hls.ErrorDetails;
    const timeout = [E.MANIFEST_LOAD_TIMEOUT, E.LEVEL_LOAD_TIMEOUT, E.FRAG_LOAD_TIMEOUT].includes(details);
    const media = timeout || [E.MANIFEST_LOAD_ERROR, E.LEVEL_LOAD_ERROR, E.FRAG_LOAD_ERROR].includes(details);
    const keyError = [E.KEY_LOAD_ERROR, E.KEY_LOAD_TIMEOUT].includes(details);
    if (media && (status === 403 || status === 410)) {
      // The edge refuses the signed URL (expired or no longer valid): one fresh authorization.
      this.afterThisEvent((position) => this.reauthorize(`HTTP ${status}`, position));
    } else if (media && !timeout && !status && this.linkExpired()) {
      // A refusal the browser could not read (a cross-origin answer without CORS headers has no
      // status) once the signed URL has expired: the expiry, not a dead PoP, is the likely cause.
      this.afterThisEvent((position) => this.reauthorize(`no answer after the link expired (${details})`, position));
    } else if (media && (timeout || !status)) {
      // No answer from the PoP: once hls.js' own retries are spent (fatal), another PoP of the
      // authorization serves the same title. A non-fatal one is a hiccup hls.js retries itself.
      if (data.fatal) this.afterThisEvent((position) => this.nextPop(details, position));
    } else if (keyError && status === 401) {
      // The playback authorization expired (OTT_PLAYBACK_TTL) before this key request: a new one.
      this.afterThisEvent((position) => this.reauthorize("the key service answered 401", position));
    } else if (keyError && (data.fatal || status === 404)) {
      // The license has no such key: hls.js would ask again on every rung for seconds, in vain.
      this.fail("key_unavailable", `The title's decryption key could not be fetched (HTTP ${status ?? "error"}).`,
        details);
    } else if (details === E.FRAG_LOAD_ERROR && status === 404) {
      if (data.fatal) {
        this.fail("segment_not_found", "A part of this title is missing on the CDN: playback stopped.",
          `404 ${shortUrl(data.frag?.url)}`);
      } else {
        this.recovered("segment_not_found", `404 ${shortUrl(data.frag?.url)}; hls.js tries another rung`);
      }
    } else if (data.fatal && data.type === Hls.ErrorTypes.MEDIA_ERROR && !this.mediaRecovered) {
      this.mediaRecovered = true;
      this.recovered("media_error", details);
      hls.recoverMediaError();
    } else if (data.fatal) {
      const reason = data.type === Hls.ErrorTypes.MEDIA_ERROR ? "media_error"
        : /^(manifest|level)/.test(details) ? "manifest_error" : "network_error";
      this.fail(reason, `Playback failed (${details}${status ? `, HTTP ${status}` : ""}).`, details);
    }
  }

  /** Replace hls.js outside its own event dispatch; ``action`` gets the playhead position to resume at. */
  afterThisEvent(action) {
    const old = this.hls;
    this.hls = null; // ignore whatever else the old instance reports
    // Read before destroy(): detaching the media resets the element's currentTime to 0.
    const position = this.position();
    setTimeout(() => {
      old?.destroy();
      if (!this.over) action(position);
    }, 0);
  }

  position() {
    return video.currentTime || 0;
  }

  /** Whether the signed URL of the PoP being played has expired (its expires_at, by this clock). */
  linkExpired() {
    const entry = this.grant?.playback.find((p) => p.pop === this.pop);
    return Boolean(entry?.expires_at) && Date.parse(entry.expires_at) <= Date.now();
  }

  async nextPop(details, position) {
    const next = this.grant.playback.find((p) => !this.triedPops.has(p.pop));
    if (!next) {
      this.fail("pop_unreachable", "No CDN PoP answers for this title: playback stopped. Try again later.",
        `${details} on every PoP`);
      return;
    }
    this.recovered("pop_unreachable", `${this.pop} did not answer (${details}); switching to ${next.pop}`);
    this.stallBegins();
    // The new hls.js fetches the key again: with an expired authorization the license answers 401.
    if (this.grantExpired() && !(await this.renewGrant())) return;
    this.load(this.grant.playback.find((p) => p.pop === next.pop) ?? next, position);
  }

  async reauthorize(refusal, position) {
    if (this.reauthorized) {
      this.fail("token_expired", "The platform refuses this title's link or key even after a new authorization.",
        `${refusal} after re-authorizing`);
      return;
    }
    this.reauthorized = true;
    this.recovered("token_expired", `${refusal} from ${this.pop}: re-authorizing`);
    this.stallBegins();
    const pop = this.pop;
    if (!(await this.renewGrant())) return;
    this.triedPops.clear();
    this.load(this.grant.playback.find((p) => p.pop === pop) ?? this.grant.playback[0], position);
  }

  /** A fragment loaded: whatever recovery came before worked, so its budgets are available again. */
  fragmentLoaded() {
    if (this.triedPops.size > 1 || this.reauthorized) {
      this.triedPops = new Set([this.pop]);
      this.reauthorized = false;
      // A later expiry or dead PoP is a new incident: reported again.
      this.reported.delete("token_expired");
      this.reported.delete("pop_unreachable");
    }
  }

  /** A non-fatal error, reported once per reason and incident. */
  recovered(reason, detail) {
    if (this.reported.has(reason)) return;
    this.reported.add(reason);
    this.emit("error", { reason, fatal: false, started: this.started, detail: String(detail).slice(0, 200) });
  }

  /** A fatal failure: before start a video start failure, after it a playback failure. */
  fail(reason, message, detail) {
    if (this.over) return;
    ottPlayer.failure = { reason, message };
    showMessage(message);
    const event = { reason, fatal: true, started: this.started };
    if (detail) event.detail = String(detail).slice(0, 200);
    this.emit("error", event);
    this.finish("error", "failed");
  }

  // -- the end ----------------------------------------------------------------------------------

  /** The end beacon, the stream session closed, hls.js stopped; once. */
  finish(reason, state, { unloading = false } = {}) {
    if (this.over) return this.closing;
    this.stallEnds();
    this.progress();
    this.setPlaying(false);
    this.emit("end", {
      reason, started: this.started, played_ms: Math.round(this.playedMs), stalled_ms: Math.round(this.stalledMs),
    });
    this.over = true;
    this.holding = false;
    const beacons = this.flush({ unloading });
    this.timers.forEach(clearInterval);
    clearTimeout(this.heartbeatTimer);
    this.stopWatchingTime();
    // Not inside hls.js' own event dispatch (fail() runs in its ERROR handler): destroy it afterwards.
    const hls = this.hls;
    this.hls = null;
    if (hls) setTimeout(() => hls.destroy(), 0);
    setState(state);
    this.closing = Promise.all([beacons, this.endStreamSession()]);
    return this.closing;
  }

  async endStreamSession() {
    const grant = this.grant; // the current grant's CAS session (a renewal ended the one before)
    if (!grant?.session_id || grant.ended || !(auth.accessToken || auth.refreshToken)) return;
    grant.ended = true;
    try {
      // keepalive: the request outlives a page being closed.
      await authed("DELETE", `/api/cas/sessions/${grant.session_id}`, { keepalive: true });
    } catch (error) {
      console.warn("could not end the stream session:", error);
    }
  }

  /** The next heartbeat in heartbeatS seconds (what CAS asked for, once known), and so on. */
  scheduleHeartbeat() {
    clearTimeout(this.heartbeatTimer);
    if (this.over) return;
    this.heartbeatTimer = setTimeout(async () => {
      await this.heartbeat();
      this.scheduleHeartbeat();
    }, this.heartbeatS * 1000);
  }

  /** CAS's heartbeat_interval_s for the current stream session (the authorization's, when it says). */
  async learnHeartbeatInterval() {
    const grant = this.grant;
    let seconds = grant?.heartbeat_interval_s;
    if (seconds === undefined && grant?.session_id) {
      try {
        const sessions = await authed("GET", "/api/cas/sessions");
        seconds = sessions.find((s) => s.session_id === grant.session_id)?.heartbeat_interval_s;
      } catch (error) {
        console.warn("could not read the stream session's heartbeat interval:", error);
      }
    }
    if (!(Number(seconds) > 0) || this.heartbeatS === Math.max(1, Number(seconds))) return;
    this.heartbeatS = Math.max(1, Number(seconds));
    this.scheduleHeartbeat(); // from now: a shorter interval must not wait for the default one to pass
  }

  async heartbeat() {
    const grant = this.grant; // after a renewal, the new stream session
    if (this.over || !grant?.session_id || grant.ended) return;
    try {
      await authed("POST", `/api/cas/sessions/${grant.session_id}/heartbeat`);
    } catch (error) {
      console.warn("stream session heartbeat failed:", error);
    }
  }
}

function isKeyUrl(url) {
  const parsed = new URL(url, location.href);
  return parsed.origin === location.origin && parsed.pathname.startsWith("/api/license/keys/");
}

/** A media URL without its signed prefix, for error details (no tokens in beacons). */
function shortUrl(url) {
  if (!url) return "";
  const path = new URL(url).pathname;
  return path.replace(/^\/s\/[^/]+\/[0-9]+/, "");
}

// ----------------------------------------------------------------------------------------------
// The video element's events drive the session's state

let session = null;
let ending = Promise.resolve(); // the sessions ended by Play presses, until closed

video.addEventListener("waiting", () => {
  if (session && !video.seeking) session.stallBegins();
});
video.addEventListener("playing", () => {
  if (!session || session.over || !session.started) return;
  session.stallEnds();
  session.setPlaying(true);
  setState("playing");
});
video.addEventListener("pause", () => {
  if (session && session.started && !session.over && !video.ended) session.setPlaying(false);
});
video.addEventListener("ended", () => session?.finish("ended", "ended"));

// Closing the tab, navigating away or a phone locking: the viewer left.
window.addEventListener("pagehide", () => session?.finish("exit", "ended", { unloading: true }));

ottPlayer.stop = () => (session ? session.finish("exit", "ended") : Promise.resolve());

// ----------------------------------------------------------------------------------------------
// Play

$("title").value = params.get("title") ?? "";
showSignedIn();

$("play-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = $("title").value.trim();
  // A new play ends the one before, and waits until its stream session is closed: else CAS would
  // still count it against the new authorization (a spurious stream_limit).
  const before = session;
  session = null;
  const mine = (ending = Promise.all([ending, before?.finish("exit", "ended")]));
  await mine;
  if (ending !== mine || session) return; // another Play was pressed meanwhile: that one plays
  session = new Session(title);
  session.play();
});

// The overlay: what the player sees, about four times a second.
setInterval(() => {
  if (!session) return;
  const hls = session.hls;
  const rung = session.rung;
  showRung(rung);
  $("stat-buffer").textContent = `${bufferAhead().toFixed(1)} s`;
  $("stat-throughput").textContent = hls ? `${Math.round(hls.bandwidthEstimate / 1000)} kbps` : "–";
  $("stat-stalls").textContent = `${session.stalls}${session.stallSince !== null ? " (stalled)" : ""}`;
  const quality = video.getVideoPlaybackQuality?.();
  $("stat-dropped").textContent = quality ? `${quality.droppedVideoFrames} / ${quality.totalVideoFrames}` : "–";
}, STATS_MS);

function showRung(rung) {
  $("stat-rung").textContent = rung ? `${rung.height}p ${rung.kbps} kbps` : "–";
}

/** Seconds of media buffered ahead of the playhead. */
function bufferAhead() {
  const t = video.currentTime;
  for (let i = 0; i < video.buffered.length; i++) {
    if (video.buffered.start(i) <= t + 0.1 && t <= video.buffered.end(i)) return video.buffered.end(i) - t;
  }
  return 0;
}
