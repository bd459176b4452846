// The call page shared by the therapist room (room.js) and the client page (join.js).
//
// Both pages have the same stage (videos, a message overlay, an end panel), the same devices,
// mute and leave controls, and the same life of a signalling connection and a PeerCall. This
// module owns all of that once; each page passes what differs for its role as options and
// callbacks, and adds its own signalling handlers.
//
// UI state lives here in JS (`page.state`) and is shown on the stage element as
// `data-state` (values below); data-testid attributes are fixed identifiers and are never
// changed or read as state.

import { byTestId, h, showMessage } from "./api.js";
import { Signaling } from "./signaling.js";
import { LocalMedia, PeerCall } from "./media.js";
import {
  pageLoaded, setConnectionStatus, setupDevices, setupMuteButtons, setupRemotePlayback, setupTiles,
} from "./callui.js";
import { setupAgenda } from "./agenda.js";
import { QualityIndicator, StatsReporter } from "./quality.js";
import { setupScreenShare } from "./screen.js";

// The stage's data-state, one of:
// - live (set by the pages): "opening" (therapist, before the room answers), "precall" (client
//   device check), "joining", "waiting" (for the other person: the waiting room, or they are
//   away), "lobby" (therapist: someone to admit), "takeover" (therapist: open in another tab),
//   "connecting" (client: media not up yet), "call", "peer_reconnecting" (the other person's
//   connection dropped and the server holds their seat);
// - "reconnecting" (set here, over whatever the page asked for): our own signalling or media is
//   being rebuilt; the remote video keeps its last frame under a calm overlay, and the page's
//   own state comes back once media flows again;
// - final (set by finish() / showEnd(), and they stay: nothing more happens on the page):
//   "ended", "left", "denied", "replaced", "fatal", "disconnected".

const FINAL_STAGES = new Set(["ended", "left", "denied", "replaced", "fatal", "disconnected"]);
// A silent inbound stream for this long, while the other person is in with media, is a broken
// path (e.g. Wi-Fi to phone data) that ICE has not noticed yet: build a new peer connection.
const NO_MEDIA_RENEGOTIATE_MS = 5000;
// After our own outage (e.g. the server restarted), the other person needs a moment to come
// back too; until then they are "reconnecting", not "left".
const PEER_RETURN_MS = 30000;
// How long a re-offer waits for fresh ICE servers (`ice_refresh`) before using the old ones.
const ICE_REFRESH_WAIT_MS = 2000;

/** A button that reloads the page: rejoining or reconnecting starts the page afresh. */
export function reloadButton(testid, label) {
  const button = h("button", { type: "button", class: "btn btn-primary", "data-testid": testid }, label);
  button.addEventListener("click", () => location.reload());
  return button;
}

/**
 * Set up the shared part of a call page.
 *
 * Options:
 * - role: "client" | "therapist" (agenda behaviour).
 * - wsPath: the signalling WebSocket path.
 * - peerName, onQualityChange: for the connection-quality indicator.
 * - announce: screen-reader announcer (optional).
 * - endings: page texts for the final states, each `(msg) => ({ title, detail, actions })`:
 *   `left` (the Leave button), `replaced`, `fatal` (a fatal server error) and
 *   `disconnected(info)`, which may return null when it has dealt with the loss itself
 *   (it may be async) and may set `kind` (e.g. "fatal" when nothing was ever received).
 * - canSendMute(): whether mute changes go to the server now (default: always).
 * - onMediaState(s): after the connection status shows a new PeerCall state.
 * - onStop(): the page's own teardown when the call stops for good.
 * - onEndPanel(): hide the page's own panels when the end panel covers the stage.
 * - onWelcome(msg): the session is open; `msg` is the welcome.
 * - onRejoin(msg): the welcome after an automatic reconnect: take the seat back (no device
 *   check, no admission); call recovered() if there is no call to wait for.
 * - onEnded(msg): the session ended (ended message, ended at welcome, or session_ended error).
 * - onError(msg): a page-specific error; return true when it was handled.
 * - beforeDisconnect(): return true when a lost socket means something else (e.g. the end the
 *   therapist asked for); then the page handles it.
 */
export function createCallPage(options) {
  const {
    role, wsPath, peerName, onQualityChange, announce, endings,
    canSendMute = () => true,
    onMediaState = () => {},
    onStop = () => {},
    onEndPanel = () => {},
    onWelcome = () => {},
    onRejoin = () => {},
    onEnded,
    onError = () => false,
    beforeDisconnect = () => false,
  } = options;

  const el = {
    conn: byTestId("connection-status"),
    error: byTestId("error-message"),
    main: byTestId("room-main"),
    stage: byTestId("stage"),
    stageMessage: byTestId("stage-message"),
    remote: byTestId("remote-video"),
    self: byTestId("self-video"),
    play: byTestId("play-button"),
    endPanel: byTestId("end-panel"),
    endTitle: byTestId("end-title"),
    endDetail: byTestId("end-detail"),
    endActions: byTestId("end-actions"),
    camera: byTestId("camera-select"),
    mic: byTestId("mic-select"),
    meter: byTestId("mic-level"),
    controls: byTestId("controls"),
    muteAudio: byTestId("mute-audio"),
    muteVideo: byTestId("mute-video"),
    leave: byTestId("leave-button"),
    agenda: byTestId("agenda"),
    shareScreen: byTestId("share-screen-button"),
    sharingBar: byTestId("sharing-bar"),
    stopSharing: byTestId("stop-sharing"),
    remoteScreen: byTestId("remote-screen"),
  };

  const local = new LocalMedia();
  const state = {
    signaling: null,
    welcome: null,
    ice: { iceServers: [], iceTransportPolicy: "all" }, // from the latest joined/admitted
    iceAt: 0, // performance.now() when those ICE servers were issued
    iceTtlMs: null, // how long their TURN credentials last (null: nothing expires)
    call: null,
    stage: el.stage.dataset.state || "",
    finished: false, // stopped for good: ended, left, replaced, denied, fatal or disconnected
    ending: null, // which of those, once one is shown
    recovering: null, // "signalling" | "media" while our own connection is being rebuilt
    rejoining: false, // the next welcome follows an automatic reconnect
    shown: [el.stage.dataset.state || "", "", ""], // the stage the page last asked for
    peer: null, // the other person's last peer_state
    peerWasPresent: false, // they were in the call when our own connection dropped
    rejoinedAt: null, // performance.now() of our last automatic rejoin
  };
  let mediaReady = Promise.resolve();

  const showError = (message) => showMessage(el.error, message, "error");
  const send = (msg) => Boolean(state.signaling && state.signaling.send(msg));

  const agenda = setupAgenda({ root: el.agenda, role, send, onProblem: showError, announce });
  const quality = new QualityIndicator({
    youEl: byTestId("quality-you"), peerEl: byTestId("quality-peer"), peerName, onChange: onQualityChange,
  });
  const stats = new StatsReporter({ getPc: () => (state.call ? state.call.pc : null), send });
  const devices = setupDevices({
    local,
    cameraSelect: el.camera,
    micSelect: el.mic,
    meterEl: el.meter,
    selfVideo: el.self,
    onProblem: showError,
  });
  const playback = setupRemotePlayback(el.remote, el.play);
  const screen = setupScreenShare({
    button: el.shareScreen,
    bar: el.sharingBar,
    stopButton: el.stopSharing,
    stage: el.stage,
    remoteScreen: el.remoteScreen,
    peerName: role === "therapist" ? "your client" : "your therapist",
    send,
    getCall: () => state.call,
    onProblem: showError,
    announce,
  });

  function sendMute() {
    if (state.signaling && canSendMute()) {
      state.signaling.send({ type: "mute", audio: local.audioMuted, video: local.videoMuted });
    }
  }

  // Name tiles and "microphone off" badges for a camera or microphone that is off (callui.js).
  const tiles = setupTiles({
    stage: el.stage, local, peerName: options.peerTileName || "", peerFallback: options.peerTileFallback,
  });
  setupMuteButtons({
    local, audioButton: el.muteAudio, videoButton: el.muteVideo, onChange: sendMute, showSelf: devices.showSelf,
    onRender: tiles.render,
  });

  /** Show `kind` as the stage's state; `lead` (and `detail`) in the overlay, or clear it.
   * While our connection is being rebuilt the page's wish is kept and shown afterwards. */
  function setStage(kind, lead = "", detail = "") {
    if (!FINAL_STAGES.has(kind) && kind !== "reconnecting") {
      state.shown = [kind, lead, detail];
      if (state.recovering) {
        paintStage("reconnecting", "Reconnecting…", "Please stay on this page. The call will continue by itself.");
        return;
      }
    }
    paintStage(kind, lead, detail);
  }

  function paintStage(kind, lead, detail) {
    state.stage = kind;
    el.stage.dataset.state = kind;
    const overlay = el.stageMessage.parentElement;
    if (!lead) {
      overlay.hidden = true;
      el.stageMessage.replaceChildren();
      return;
    }
    overlay.hidden = false;
    // replaceChildren turns a null argument into the text "null": pass only real nodes.
    const lines = [h("p", { class: "lead" }, lead)];
    if (detail) lines.push(h("p", {}, detail));
    el.stageMessage.replaceChildren(...lines);
  }

  /** Cover the stage with a final message; `kind` is one of the final states. */
  function showEnd(kind, { title, detail = "", actions = [] }) {
    state.ending = kind;
    el.endTitle.textContent = title;
    el.endDetail.textContent = detail;
    el.endDetail.hidden = !detail;
    el.endActions.replaceChildren(...actions);
    el.endPanel.hidden = false;
    el.controls.hidden = true;
    onEndPanel();
    setStage(kind);
    const focusable = el.endActions.querySelector("a, button");
    if (focusable) focusable.focus();
  }

  /** Stop media, reports and the call for good; the signalling socket is closed by callers. */
  function stop() {
    state.finished = true;
    state.recovering = null;
    tiles.peer(null);
    watchdog.stop();
    stats.stop();
    quality.clear();
    onStop();
    screen.stop();
    if (state.call) state.call.dispose();
    state.call = null;
    local.stop();
    devices.meter.close();
    el.self.srcObject = null;
  }

  /**
   * Stop, close the socket, show `status` and then the ending (none when `ending` is null:
   * the page shows something else, like the client's check-in).
   */
  function finish(kind, ending, status = "closed") {
    stop();
    if (state.signaling) state.signaling.close();
    setConnectionStatus(el.conn, status);
    if (ending) {
      showEnd(kind, ending);
    } else {
      state.ending = kind;
      setStage(kind);
    }
  }

  el.leave.addEventListener("click", () => {
    if (state.finished) return;
    const sig = state.signaling;
    const sent = sig ? sig.send({ type: "leave" }) : false;
    stop();
    setConnectionStatus(el.conn, "closed");
    showEnd("left", endings.left());
    // Give the server a moment to acknowledge with "left" before closing.
    if (sig && sent) setTimeout(() => sig.close(), 2000);
    else if (sig) sig.close();
  });

  /** Our connection is being rebuilt (`what`: "signalling" or "media"): say so calmly. */
  function startRecovering(what) {
    if (state.finished) return;
    if (state.recovering !== "signalling") state.recovering = what;
    setConnectionStatus(el.conn, "reconnecting");
    setStage(...state.shown);
  }

  /** Whether the other person, absent now, was with us before our own outage and may still
   * be on their way back (the server restarted for them too). */
  function peerAwayAfterOurOutage() {
    return state.peerWasPresent && state.rejoinedAt !== null
      && performance.now() - state.rejoinedAt < PEER_RETURN_MS;
  }

  /** The rebuild is over: show what the page wants again. */
  function recovered() {
    if (!state.recovering || state.finished) return;
    state.recovering = null;
    setStage(...state.shown);
  }

  /**
   * A new RTCPeerConnection and offer, keeping the local tracks and the stage: after a
   * reconnect, a failed or silent connection, or the server's restart_media.
   */
  function renegotiate(reason) {
    if (state.finished || !state.call) return;
    if (!state.signaling || !state.signaling.isOpen) return; // the rejoin renegotiates
    console.info(`renegotiating media: ${reason}`);
    startRecovering("media");
    watchdog.reset();
    if (!iceIsStale()) {
      state.call.start();
      return;
    }
    // TURN credentials past half their life may expire before this connection needs a
    // relay: ask for fresh ones first (a rejoin would get them on admitted/joined).
    if (iceWaiters.length) return; // already asked: that answer starts the connection
    const call = state.call;
    refreshIce().then(() => {
      if (!state.finished && state.call === call) call.start();
    });
  }

  function iceIsStale() {
    return Boolean(state.iceTtlMs) && performance.now() - state.iceAt > state.iceTtlMs / 2;
  }

  let iceWaiters = [];
  /** Resolves once fresh ICE servers arrived, or after ICE_REFRESH_WAIT_MS (keep the old). */
  function refreshIce() {
    return new Promise((resolve) => {
      const done = () => {
        iceWaiters = iceWaiters.filter((w) => w !== done);
        resolve();
      };
      iceWaiters.push(done);
      if (iceWaiters.length === 1) send({ type: "ice_refresh" });
      setTimeout(done, ICE_REFRESH_WAIT_MS);
    });
  }

  /** Inbound RTP bytes must grow while the other person is in the call with media. */
  const watchdog = (() => {
    let lastBytes = -1;
    let lastGrowth = performance.now();
    let lastPc = null;
    let busy = false;
    let strikes = 0; // renegotiations in a row that brought no media: wait longer each time
    const reset = () => {
      lastBytes = -1;
      lastGrowth = performance.now();
    };
    const tick = async () => {
      const pc = state.call && state.call.pc;
      const peer = state.peer;
      const expecting = pc && pc.connectionState === "connected" && !state.finished
        && state.signaling && state.signaling.isOpen
        && peer && peer.present && !peer.reconnecting && peer.media === "connected";
      if (!expecting || pc !== lastPc) {
        lastPc = pc;
        reset();
        return;
      }
      if (busy) return;
      busy = true;
      try {
        let bytes = 0;
        (await pc.getStats()).forEach((r) => {
          if (r.type === "inbound-rtp") bytes += r.bytesReceived || 0;
        });
        if (pc !== (state.call && state.call.pc)) return;
        if (bytes > lastBytes) {
          if (lastBytes >= 0) strikes = 0;
          lastBytes = bytes;
          lastGrowth = performance.now();
        } else if (performance.now() - lastGrowth > NO_MEDIA_RENEGOTIATE_MS * 2 ** Math.min(strikes, 4)) {
          strikes += 1;
          renegotiate("no inbound media");
        }
      } catch {
        /* the connection closed under us */
      } finally {
        busy = false;
      }
    };
    const timer = setInterval(tick, 1000);
    return { reset, stop: () => clearInterval(timer) };
  })();

  /** Start (once) and offer the call, as soon as the camera and microphone are open. */
  async function startCall() {
    await mediaReady;
    // The call's remote <video> must not hold the page's load event (see pageLoaded).
    await pageLoaded;
    if (state.finished) return;
    if (!state.call) {
      state.call = new PeerCall({
        signaling: state.signaling,
        ...state.ice,
        local,
        remoteVideo: el.remote,
        onState: (s) => {
          if (state.finished) return;
          if (s === "connected" && state.recovering !== "signalling") recovered();
          if (state.recovering !== "signalling") setConnectionStatus(el.conn, s);
          onMediaState(s);
        },
        onRemoteStream: () => playback.tryPlay(),
        onRecover: (reason) => renegotiate(`peer connection ${reason}`),
        remoteScreen: el.remoteScreen,
        getScreenTrack: () => screen.track(),
      });
      screen.setEnabled(true);
    }
    await state.call.start();
    if (local.audioMuted || local.videoMuted) sendMute();
  }

  /** Open the camera and microphone; `then()` runs once the device lists are filled. */
  function startMedia(then = () => {}) {
    mediaReady = local.start().then(async (problems) => {
      if (problems.length) showError(problems.join(" "));
      await devices.refresh();
      then();
    });
    return mediaReady;
  }

  /** Connect the signalling socket: the shared handlers, then the page's own `handlers`. */
  function connect(handlers = {}) {
    const sig = new Signaling(wsPath, {
      // Tests may shorten the outage after which the page stops trying.
      giveUpAfterMs: Number(window.rapportGiveUpAfterMs) || 5 * 60 * 1000,
    });
    state.signaling = sig;

    sig.on("reconnecting", (info) => {
      if (state.finished) return;
      console.info(`signalling lost (code ${info.code}); retry ${info.attempt} in ${info.delayMs} ms`);
      if (state.recovering !== "signalling") state.peerWasPresent = Boolean(state.peer && state.peer.present);
      startRecovering("signalling");
    });
    sig.on("reconnected", (info) => {
      console.info(`signalling back after ${info.downMs} ms`);
      state.rejoining = true;
    });
    sig.on("gave_up", (info) => {
      if (state.finished) return;
      stop();
      setConnectionStatus(el.conn, "offline");
      const minutes = Math.max(1, Math.round(info.downMs / 60000));
      showEnd("disconnected", {
        title: "The connection was lost",
        detail: `Rapport could not be reached for ${minutes === 1 ? "a minute" : `${minutes} minutes`}. `
          + "Check your internet connection, then try again.",
        actions: [reloadButton("reconnect-button", "Try again")],
      });
    });

    sig.on("welcome", (msg) => {
      state.welcome = msg;
      if (msg.status === "ended") onEnded({});
      else if (state.rejoining) {
        state.rejoining = false;
        if (state.recovering === "signalling") state.recovering = "media";
        state.rejoinedAt = performance.now();
        // Once the window is over, show the other person's state as it really is.
        setTimeout(() => {
          if (state.peer && !state.finished) sig._emit("peer_state", state.peer);
        }, PEER_RETURN_MS + 100);
        onRejoin(msg);
      } else onWelcome(msg);
    });
    // TURN credentials are time-limited and only given once in the room: take the fresh ones
    // on every (re)join, before the page's own handler starts the call.
    const takeIce = (msg) => {
      state.ice = { iceServers: msg.ice_servers || [], iceTransportPolicy: msg.ice_transport_policy || "all" };
      state.iceAt = performance.now();
      state.iceTtlMs = msg.ice_ttl_s ? msg.ice_ttl_s * 1000 : null;
      if (state.call) state.call.setIce(state.ice);
    };
    sig.on("joined", takeIce);
    sig.on("admitted", takeIce);
    sig.on("ice_servers", (msg) => {
      takeIce(msg);
      for (const done of [...iceWaiters]) done();
    });
    // A (re)join starts unshared on the server: a page that still shares says so again.
    sig.on("joined", () => screen.resync());
    sig.on("admitted", () => screen.resync());
    sig.on("peer_state", (msg) => {
      if (msg.role === role) return;
      if (!state.finished) screen.onPeerState(msg);
      state.peer = msg;
      tiles.peer(msg);
      if (msg.present) state.peerWasPresent = false;
    });
    sig.on("restart_media", (msg) => renegotiate(`server asked (${msg.reason})`));
    sig.on("answer", (msg) => {
      if (state.call) state.call.handleAnswer(msg.sdp);
    });
    sig.on("agenda", (msg) => {
      if (!state.finished) agenda.update(msg);
    });
    sig.on("quality", (msg) => {
      if (!state.finished) quality.update(msg);
    });
    sig.on("ended", (msg) => onEnded(msg));
    sig.on("left", () => sig.close());
    sig.on("replaced", (msg) => finish("replaced", endings.replaced(msg)));

    sig.on("error", (msg) => {
      if (msg.ref === "stats") {
        // Our own background quality report was refused; nothing the person can act on.
        console.warn("stats report refused:", msg.message);
        return;
      }
      if (msg.ref === "ice_refresh") {
        // Not in the call (any more): the re-offer goes ahead with the ICE servers it has.
        console.warn("ICE refresh refused:", msg.message);
        return;
      }
      if (msg.ref === "offer" && msg.code === "media_failed" && !state.finished) {
        // The media engine went away under the offer (e.g. a worker restarted): try again,
        // unless a newer connection was started meanwhile (restart_media, a reconnect): the
        // retry would tear down that fresh call just as it connects.
        const generation = state.call ? state.call.generation : null;
        setTimeout(() => {
          if (state.call && state.call.generation !== generation) return;
          renegotiate("the media server was unavailable");
        }, 2000);
      }
      screen.onError(msg);
      if (onError(msg)) return;
      if (msg.code === "session_ended") {
        onEnded({});
        return;
      }
      showError(msg.message || "Something went wrong.");
      if (msg.fatal) finish("fatal", endings.fatal(msg));
    });

    sig.on("close", async (info) => {
      if (state.finished || beforeDisconnect()) return;
      stop();
      const ending = await endings.disconnected(info);
      if (!ending) return;
      setConnectionStatus(el.conn, "offline");
      showEnd(ending.kind || "disconnected", ending);
    });

    for (const [type, handler] of Object.entries(handlers)) sig.on(type, handler);

    setConnectionStatus(el.conn, "signalling");
    sig.connect().catch(() => {
      /* the close handler explains what happened */
    });
    return sig;
  }

  return {
    el, state, local, devices, agenda, quality, stats, tiles,
    send, showError, setStage, showEnd, stop, finish, startCall, startMedia, connect, renegotiate, recovered,
    peerAwayAfterOurOutage,
  };
}
