// Screen sharing (issue 13), for the therapist and the client alike.
//
// Every offer carries a second video section for the screen (media.js, PeerCall); it has no
// track until the person shares, and starting or stopping is a replaceTrack on it, so the
// call is never renegotiated and camera and audio keep flowing. The server forwards the screen
// like the camera and says who shares (peer_state.screen_sharing); one person shares at a
// time, and a second share is refused with the reason (screen_busy).
//
// The sharer sees a bar ("You are sharing your screen", Stop sharing); the other side sees the
// screen large and both faces small (the stage's `screen-shown` class). The browser's own
// "Stop sharing" ends the track, which ends the share here too.

/** Frame rate for a shared screen: worksheets change slowly, text must stay sharp. */
const SCREEN_CONSTRAINTS = { video: { frameRate: { ideal: 15, max: 30 } }, audio: false };

export function canShareScreen() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
}

/**
 * Options:
 * - button, bar, stopButton, stage, remoteScreen: the page's elements (data-testids
 *   share-screen-button, sharing-bar, stop-sharing, stage, remote-screen).
 * - peerName: "your client" / "your therapist", for messages.
 * - send(msg): sends on the signalling socket; returns false when it is not open.
 * - getCall(): the current PeerCall or null.
 * - onProblem(text): shows an error to the person; announce(text): screen-reader message.
 */
export function setupScreenShare({ button, bar, stopButton, stage, remoteScreen, peerName, send, getCall, onProblem, announce = () => {} }) {
  const state = {
    track: null, // our shared screen while we share
    starting: false, // the browser's picker is open
    peerSharing: false, // the other person shares (their last peer_state)
    peerPresent: false,
    enabled: false, // in the call: sharing is possible
  };
  const capitalised = peerName.charAt(0).toUpperCase() + peerName.slice(1);

  if (!canShareScreen()) {
    // Phones and some browsers cannot share a screen; a button that always fails is worse.
    button.hidden = true;
  }

  function render() {
    const sharing = Boolean(state.track);
    bar.hidden = !sharing;
    button.setAttribute("aria-pressed", String(sharing));
    button.disabled = !state.enabled || state.starting;
    const showRemote = state.peerSharing && state.peerPresent && !sharing;
    stage.classList.toggle("screen-shown", showRemote);
    remoteScreen.hidden = !showRemote;
  }

  /** Take the screen off the call; `tell` says whether the server must hear about it. */
  function stopSharing({ tell = true, quietly = false } = {}) {
    const track = state.track;
    if (!track) return;
    state.track = null;
    track.removeEventListener("ended", onEnded);
    track.stop();
    const call = getCall();
    if (call) call.setScreenTrack(null);
    if (tell) send({ type: "screen_share", active: false });
    render();
    if (!quietly) announce("You stopped sharing your screen.");
  }

  function onEnded() {
    stopSharing(); // the browser's own "Stop sharing", or the shared window closed
  }

  async function startSharing() {
    if (state.track || state.starting || !state.enabled) return;
    if (state.peerSharing) {
      // Refused at once, without the picker: the server would refuse it too.
      onProblem(`${capitalised} is sharing their screen. Ask them to stop, then share yours.`);
      return;
    }
    state.starting = true;
    render();
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia(SCREEN_CONSTRAINTS);
    } catch (err) {
      state.starting = false;
      render();
      // Cancelling the picker is a choice, not a problem.
      if (err && err.name !== "NotAllowedError" && err.name !== "AbortError") {
        onProblem("Your screen could not be shared. Try again, or choose another window.");
      }
      return;
    }
    state.starting = false;
    const track = stream.getVideoTracks()[0];
    if (!track || !state.enabled) {
      for (const t of stream.getTracks()) t.stop();
      render();
      return;
    }
    if ("contentHint" in track) track.contentHint = "detail"; // keep text sharp over motion
    for (const t of stream.getAudioTracks()) t.stop();
    state.track = track;
    track.addEventListener("ended", onEnded);
    const call = getCall();
    if (call) call.setScreenTrack(track);
    send({ type: "screen_share", active: true });
    render();
    announce(`You are sharing your screen with ${peerName}.`);
  }

  button.addEventListener("click", () => {
    if (state.track) stopSharing();
    else startSharing();
  });
  stopButton.addEventListener("click", () => stopSharing());

  render();

  return {
    /** The track to put on a new peer connection's screen section (null when not sharing). */
    track: () => state.track,
    /** In the call (true) or not (false): the button works only in the call. */
    setEnabled(enabled) {
      state.enabled = enabled;
      if (!enabled) stopSharing({ tell: false, quietly: true });
      render();
    },
    /** The other person's peer_state. */
    onPeerState(msg) {
      const was = state.peerSharing && state.peerPresent;
      state.peerSharing = Boolean(msg.screen_sharing);
      state.peerPresent = Boolean(msg.present);
      const now = state.peerSharing && state.peerPresent;
      if (now && !was) announce(`${capitalised} is sharing their screen.`);
      if (was && !now) announce(`${capitalised} stopped sharing their screen.`);
      render();
    },
    /** After a (re)join the server thinks we share nothing: say so again if we still do. */
    resync() {
      if (state.track) send({ type: "screen_share", active: true });
    },
    /** An error about our share (the server refused it): stop it here; the page shows why. */
    onError(msg) {
      if (msg.ref === "screen_share") stopSharing({ tell: false, quietly: true });
    },
    /** The call is over for good. */
    stop() {
      state.enabled = false;
      stopSharing({ tell: false, quietly: true });
      state.peerSharing = false;
      render();
    },
  };
}
