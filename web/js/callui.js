// Pieces of the in-call interface shared by the therapist room and the client page.

import { fillDeviceSelect, MicMeter, ensurePlaying } from "./media.js";

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
  selfVideo.srcObject = local.stream;

  const showSelf = () => {
    const video = local.track("video");
    selfVideo.classList.toggle("video-off", !video || local.videoMuted);
    if (selfVideo.srcObject !== local.stream) selfVideo.srcObject = local.stream;
    ensurePlaying(selfVideo);
  };

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

/** Mute toggles (aria-pressed = muted). Sends the mute state to the server when asked. */
export function setupMuteButtons({ local, audioButton, videoButton, onChange, showSelf }) {
  const render = () => {
    audioButton.setAttribute("aria-pressed", String(local.audioMuted));
    videoButton.setAttribute("aria-pressed", String(local.videoMuted));
    audioButton.title = local.audioMuted ? "Your microphone is off" : "Your microphone is on";
    videoButton.title = local.videoMuted ? "Your camera is off" : "Your camera is on";
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
