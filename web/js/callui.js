// Pieces of the in-call interface shared by the therapist room and the client page.

import { fillDeviceSelect, MicMeter, ensurePlaying } from "./media.js";
import { h } from "./api.js";

// Button and badge icons (fixed markup, never user content). The "off" forms are crossed.
const SVG_OPEN = '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" focusable="false">';
const MIC = '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3"/>';
const CAM = '<rect x="3" y="6" width="13" height="12" rx="2"/><path d="M16 10l5-3v10l-5-3z"/>';
const CROSS = '<path d="M3 3l18 18" stroke-width="2.4"/>';
const PERSON = '<circle cx="12" cy="8" r="4"/><path d="M4 21a8 8 0 0 1 16 0"/>';
const ICONS = {
  mic: MIC, micOff: MIC + CROSS, cam: CAM, camOff: CAM + CROSS, person: PERSON,
};

function icon(name) {
  const t = document.createElement("template");
  t.innerHTML = `${SVG_OPEN}${ICONS[name]}</svg>`;
  return t.content.firstChild;
}

/** "Dr. Ellis Moreau" → "EM", "R.K." → "RK"; titles ending in a full stop are skipped. */
export function initialsOf(name) {
  const words = String(name || "").trim().split(/\s+/).filter(Boolean);
  const named = words.filter((w) => !/^[A-Za-z]{1,4}\.$/.test(w) || words.length === 1);
  const letters = (named.length ? named : words).join(" ").match(/\p{L}/gu) || [];
  // One abbreviated word ("R.K.") is already initials.
  if (named.length === 1 && named[0].includes(".") && letters.length <= 3) return letters.join("").toUpperCase();
  const firstOf = (named.length ? named : words).map((w) => (w.match(/\p{L}/u) || [""])[0]);
  return (firstOf[0] + (firstOf.length > 1 ? firstOf[firstOf.length - 1] : "")).toUpperCase();
}

const STATUS_TEXT = {
  idle: ["Not connected", "idle"],
  signalling: ["Connecting to the server…", "connecting"],
  connecting: ["Connecting…", "connecting"],
  connected: ["Connected", "connected"],
  reconnecting: ["Reconnecting…", "connecting"],
  failed: ["Connection problem", "problem"],
  closed: ["Not connected", "idle"],
  ended: ["Session ended", "idle"],
  offline: ["Disconnected from the server", "problem"],
};

/**
 * Resolves once the page's load event has fired (at once if it already has); `.done` says so
 * synchronously. Media elements get their streams only after it: until a stream carries a
 * frame, the element delays the load event, and the tab shows "loading" all that time.
 */
export const pageLoaded = (() => {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  promise.done = false;
  const finish = () => {
    promise.done = true;
    resolve();
  };
  if (document.readyState === "complete") finish();
  else window.addEventListener("load", finish, { once: true });
  return promise;
})();

export function setConnectionStatus(el, state) {
  if (!el) return;
  const [text, look] = STATUS_TEXT[state] || [state, "idle"];
  el.textContent = text;
  el.dataset.state = look;
}

/**
 * Camera/microphone pickers + level meter + self-view, kept in sync with a LocalMedia.
 * Returns { refresh, meter }.
 */
export function setupDevices({ local, cameraSelect, micSelect, meterEl, selfVideo, onProblem }) {
  const meter = new MicMeter(meterEl);

  const showSelf = () => {
    const video = local.track("video");
    selfVideo.classList.toggle("video-off", !video || local.videoMuted);
    // A <video> with a stream and no frames yet holds the page's load event (the tab keeps
    // "loading", and never stops with no camera): attach the stream only once loaded.
    if (!pageLoaded.done) return;
    if (selfVideo.srcObject !== local.stream) selfVideo.srcObject = local.stream;
    ensurePlaying(selfVideo);
  };
  pageLoaded.then(showSelf);

  local.onTrackChange((kind, track) => {
    if (kind === "audio") meter.attach(track);
    else showSelf();
  });

  const refresh = async () => {
    if (cameraSelect) await fillDeviceSelect(cameraSelect, "videoinput", local.videoDeviceId);
    if (micSelect) await fillDeviceSelect(micSelect, "audioinput", local.audioDeviceId);
  };

  const onChange = (kind, select) => async () => {
    select.disabled = true;
    const problem = await local.switchDevice(kind, select.value);
    select.disabled = false;
    if (problem) onProblem(problem);
    else onProblem("");
    await refresh();
  };
  if (cameraSelect) cameraSelect.addEventListener("change", onChange("video", cameraSelect));
  if (micSelect) micSelect.addEventListener("change", onChange("audio", micSelect));
  if (navigator.mediaDevices && "ondevicechange" in navigator.mediaDevices) {
    navigator.mediaDevices.addEventListener("devicechange", () => refresh());
  }

  // Attach to whatever is already open.
  meter.attach(local.track("audio"));
  showSelf();
  return { refresh, meter, showSelf };
}

/**
 * Mute toggles (aria-pressed = muted). The label says what a press does ("Unmute",
 * "Start video") and the icon is crossed while off. Sends the mute state when asked.
 */
export function setupMuteButtons({ local, audioButton, videoButton, onChange, showSelf, onRender = () => {} }) {
  const label = (button, iconName, text) => {
    button.replaceChildren(icon(iconName), h("span", { class: "btn-label" }, text));
  };
  const render = () => {
    audioButton.setAttribute("aria-pressed", String(local.audioMuted));
    videoButton.setAttribute("aria-pressed", String(local.videoMuted));
    label(audioButton, local.audioMuted ? "micOff" : "mic", local.audioMuted ? "Unmute" : "Mute");
    label(videoButton, local.videoMuted ? "camOff" : "cam", local.videoMuted ? "Start video" : "Stop video");
    audioButton.title = local.audioMuted ? "Your microphone is off" : "Your microphone is on";
    videoButton.title = local.videoMuted ? "Your camera is off" : "Your camera is on";
    onRender();
  };
  audioButton.addEventListener("click", () => {
    local.setMuted("audio", !local.audioMuted);
    render();
    onChange();
  });
  videoButton.addEventListener("click", () => {
    local.setMuted("video", !local.videoMuted);
    render();
    if (showSelf) showSelf();
    onChange();
  });
  render();
  return { render };
}

/**
 * What stands in for a camera that is off, on both sides: the other person's name tile over
 * their (black) video, a "microphone off" badge on whichever side is muted, and a tile in
 * place of our own self-view. The other person's state comes from peer_state; ours from
 * LocalMedia. The stage's data-state decides (in CSS) where the tiles may show at all.
 */
export function setupTiles({ stage, local, peerName = "", peerFallback = "The other person" }) {
  let name = peerName;
  let peer = null;
  const avatar = h("span", { class: "tile-avatar", "aria-hidden": "true" });
  const tileName = h("p", { class: "tile-name", "data-testid": "remote-tile-name" });
  const remoteTile = h("div", { class: "peer-tile", "data-testid": "remote-tile", hidden: true },
    avatar, tileName, h("p", { class: "tile-note" }, icon("camOff"), h("span", {}, "Camera off")));
  const remoteMicText = h("span", {});
  const remoteMic = h("p", { class: "mic-off-badge remote-mic-off", "data-testid": "remote-mic-off", hidden: true },
    icon("micOff"), remoteMicText);
  const selfTile = h("div", { class: "self-tile", "data-testid": "self-tile", hidden: true },
    icon("camOff"), h("span", {}, "Camera off"));
  const selfMic = h("p", { class: "mic-off-badge self-mic-off", "data-testid": "self-mic-off", hidden: true },
    icon("micOff"), h("span", {}, "You are muted"));
  stage.append(remoteTile, remoteMic, selfTile, selfMic);

  const render = () => {
    const shown = name || peerFallback;
    const initials = name ? initialsOf(name) : "";
    avatar.replaceChildren(initials || icon("person"));
    tileName.textContent = shown;
    remoteMicText.textContent = `${shown}: microphone off`;
    const here = Boolean(peer && peer.present);
    remoteTile.hidden = !(here && peer.video_muted);
    remoteMic.hidden = !(here && peer.audio_muted);
    const camera = local.track("video");
    selfTile.hidden = Boolean(camera) && !local.videoMuted;
    selfMic.hidden = !local.audioMuted;
  };
  local.onTrackChange(() => render());
  render();
  return {
    /** The other person's latest peer_state (null once they or we are gone). */
    peer(msg) {
      peer = msg;
      render();
    },
    /** Their name (initials come from it); blank shows the fallback and a person icon. */
    setPeerName(value) {
      name = String(value || "").trim();
      render();
    },
    render,
  };
}

/**
 * Keep the remote <video> playing. If the browser blocks sound until a click, show a button.
 */
export function setupRemotePlayback(remoteVideo, playButton) {
  const tryPlay = async () => {
    if (!remoteVideo.srcObject) return;
    const ok = await ensurePlaying(remoteVideo);
    if (playButton) playButton.hidden = ok;
  };
  if (playButton) {
    playButton.addEventListener("click", async () => {
      await tryPlay();
    });
  }
  remoteVideo.addEventListener("loadedmetadata", tryPlay);
  return { tryPlay };
}

/** Announce a sentence to screen readers through a visually hidden polite live region. */
export function announcer(el) {
  return (text) => {
    if (!el) return;
    el.textContent = "";
    // A fresh text node after a tick makes screen readers announce repeated messages too.
    setTimeout(() => {
      el.textContent = text;
    }, 50);
  };
}
