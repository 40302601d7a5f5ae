// The meeting page: devices and preview, join, the WebSocket protocol (docs/architecture.md
// "WebSocket protocol"), perfect negotiation as the polite peer (the SFU is impolite),
// end-to-end encryption (keys.js for keys, e2ee-worker.js for frames), the participant
// grid, controls, invite link, and reconnecting after a network drop.
//
// Must never: put the room secret (the URL fragment) in a request, a log, storage or a
// message; send media frames that were not encrypted; load anything from another origin.
import { E2ee, parseSecret } from './keys.js';
import { alignExtmapIds, currentDtlsRole, keepDtlsRole, sentExtension } from './sdp.js';

const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.replace(/^\/r\//, '').replace(/\/.*$/, ''));
const secret = location.hash.slice(1);

const state = {
  participant: null,
  resume: null,
  ws: null,
  pc: null,
  e2ee: null,
  worker: null,
  local: null, // MediaStream of camera + microphone
  screen: null, // MediaStream of the shared screen
  senders: { audio: null, video: null },
  names: new Map(), // participant → display name
  states: new Map(), // participant → MediaState
  remote: new Map(), // participant → received tracks, oldest first (RemoteMedia)
  streams: new Map(), // participant → MediaStream its tile shows
  transformed: new WeakSet(), // receivers whose frames already go through the worker
  undecryptable: new Set(),
  media: { audio_muted: false, video_muted: false, screen_sharing: false, hand_raised: false },
  leaving: false,
  reconnectAttempt: 0,
  negotiation: { makingOffer: false, settingRemoteAnswer: false },
  pendingCandidates: [],
  inbox: Promise.resolve(), // server messages, handled one after the other
  lastingStatus: '',
};

let statusTimer = null;

// `transient`: a passing notice (e.g. "copied"); the lasting status comes back after it.
function status(text, { transient = false } = {}) {
  clearTimeout(statusTimer);
  if (transient) {
    const lasting = state.lastingStatus;
    statusTimer = setTimeout(() => ($('status').textContent = lasting), 5000);
  } else {
    state.lastingStatus = text;
  }
  $('status').textContent = text;
}

function fatal(text) {
  const el = $('fatal');
  el.textContent = text;
  el.hidden = false;
}

// --- Encoded Transform support: detect the API, never the user agent ---------------------
const hasScriptTransform = typeof window.RTCRtpScriptTransform === 'function';
const hasEncodedStreams =
  typeof window.RTCRtpSender === 'function' && 'createEncodedStreams' in window.RTCRtpSender.prototype;

function attachTransform(senderOrReceiver, options) {
  if (hasScriptTransform) {
    senderOrReceiver.transform = new RTCRtpScriptTransform(state.worker, options);
  } else {
    const { readable, writable } = senderOrReceiver.createEncodedStreams();
    state.worker.postMessage({ type: 'streams', readable, writable, options }, [readable, writable]);
  }
}

// --- Devices and preview ----------------------------------------------------------------
async function openDevices() {
  const cam = $('camera').value;
  const mic = $('microphone').value;
  const constraints = {
    audio: mic ? { deviceId: { exact: mic } } : true,
    video: cam ? { deviceId: { exact: cam } } : true,
  };
  const stream = await navigator.mediaDevices.getUserMedia(constraints);
  if (state.local) for (const t of state.local.getTracks()) t.stop();
  state.local = stream;
  $('preview').srcObject = stream;
  await listDevices();
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [select, kind, track] of [
    [$('camera'), 'videoinput', state.local?.getVideoTracks()[0]],
    [$('microphone'), 'audioinput', state.local?.getAudioTracks()[0]],
  ]) {
    const current = track?.getSettings().deviceId || select.value;
    select.replaceChildren(
      ...devices
        .filter((d) => d.kind === kind)
        .map((d, i) => new Option(d.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i + 1}`, d.deviceId)),
    );
    if (current) select.value = current;
  }
}

// --- Signaling -----------------------------------------------------------------------------
// A join normally connects within about 2 s (one DTLS retransmission included); one
// that has not after this long is started over.
const CONNECT_WATCHDOG_MS = 8000;

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

function sendBlobs(out) {
  for (const o of out) send({ type: 'e2ee', to: o.to ?? null, blob: o.blob });
}

function wsUrl(path) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
}

async function join(displayName) {
  const body = { display_name: displayName };
  const hostKey = sessionStorage.getItem(`veil-host:${room}`);
  if (hostKey) body.host_key = hostKey;
  const res = await fetch(`/api/rooms/${encodeURIComponent(room)}/join`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const reply = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(reply.message || `could not join (${res.status})`), { status: res.status });
  state.wsPath = reply.ws || '/ws';
  openSocket({ type: 'join', grant: reply.grant });
}

function openSocket(first) {
  const ws = new WebSocket(wsUrl(state.wsPath));
  // A socket replaced is closed, so the server lets its participant go.
  if (state.ws && state.ws !== ws) state.ws.close();
  state.ws = ws;
  ws.addEventListener('open', () => ws.send(JSON.stringify(first)));
  ws.addEventListener('message', (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    // One message at a time, in order: handlers await (key setup, SDP), and an offer or a
    // key blob must not be seen before the `joined` that prepares for it.
    state.inbox = state.inbox
      .then(() => (state.ws === ws ? onServerMessage(msg) : undefined))
      .catch((e) => status(`Problem: ${e.message}`));
  });
  ws.addEventListener('close', () => {
    if (state.ws !== ws || state.leaving) return;
    reconnect();
  });
}

// After a drop: resume as the same participant (no leave seen by others); if that is no
// longer possible, join again as a new participant.
function reconnect() {
  state.ws = null;
  const delay = Math.min(1000 * 2 ** state.reconnectAttempt, 8000);
  state.reconnectAttempt += 1;
  status('Connection lost. Reconnecting…');
  setTimeout(() => {
    if (state.leaving) return;
    if (state.resume && state.reconnectAttempt <= 6) openSocket({ type: 'resume', token: state.resume });
    else restart();
  }, delay);
}

async function restart() {
  state.resume = null;
  // Let go of the refused socket first: its close must not start a second rejoin while
  // this one waits for its grant (that would leave a ghost participant behind).
  const old = state.ws;
  state.ws = null;
  if (old) old.close();
  closePeerConnection();
  resetRoom();
  try {
    await join($('display-name').value.trim());
  } catch (e) {
    // Gone for good (ended, expired): say so instead of retrying forever.
    if (e.status === 404) end('This meeting has ended or no longer exists.');
    else reconnect();
  }
}

async function onServerMessage(msg) {
  switch (msg.type) {
    case 'joined':
      await onJoined(msg);
      break;
    case 'participant_joined':
      state.names.set(msg.participant, msg.display_name);
      renderTile(msg.participant);
      break;
    case 'participant_left':
      await onParticipantLeft(msg.participant);
      break;
    case 'participant_state':
      state.states.set(msg.participant, msg.state || {});
      showRemote(msg.participant);
      break;
    case 'e2ee':
      if (!state.e2ee) return;
      try {
        sendBlobs(await state.e2ee.handle(msg.from, msg.blob));
      } catch {
        // Refused blobs (bad MAC, forged, malformed) are dropped; the tile shows why.
      }
      break;
    case 'offer':
    case 'answer':
      await onDescription({ type: msg.type, sdp: msg.sdp });
      break;
    case 'candidate':
      await onCandidate(msg.candidate);
      break;
    case 'track_published':
    case 'track_unpublished':
      if (msg.type === 'track_unpublished') removeTrack(msg.track);
      break;
    case 'media_reset':
      // The SFU node was lost: new peer connection, same participant, same keys.
      restartMedia();
      break;
    case 'error':
      if (msg.code === 'resume_expired') {
        restart();
      } else {
        status(`The server refused a message: ${msg.message}`);
      }
      break;
    case 'closed':
      end(`The meeting ended for you (${msg.reason}).`);
      break;
  }
}

async function onJoined(msg) {
  state.reconnectAttempt = 0;
  const firstTime = state.participant !== msg.participant;
  state.participant = msg.participant;
  if (msg.resume) state.resume = msg.resume;
  for (const p of msg.participants || []) {
    state.names.set(p.participant, p.display_name);
    state.states.set(p.participant, p.state || {});
  }
  state.names.set(state.participant, $('display-name').value.trim());
  if (firstTime || !state.e2ee) {
    state.e2ee = await E2ee.create(secret, room, state.participant, {
      onOwnKey: (kid, key) => {
        // A rotated key is used a moment later, so members receive it first.
        const post = () => state.worker.postMessage({ type: 'own-key', kid, key });
        if (kid === 0) post();
        else setTimeout(post, 1000);
      },
      onPeerKey: (participant, kid, key) => state.worker.postMessage({ type: 'peer-key', participant, kid, key }),
      onChange: () => refreshSecurity(),
    });
  }
  // Announce (again, after a resume: repairs anything lost while disconnected).
  sendBlobs(await state.e2ee.start());
  if (!state.pc) await startPeerConnection();
  send({ type: 'state', state: state.media });
  for (const id of state.names.keys()) renderTile(id);
  refreshSecurity();
  status('Connected. Media is end-to-end encrypted.');
}

async function onParticipantLeft(participant) {
  state.names.delete(participant);
  state.states.delete(participant);
  state.streams.delete(participant);
  state.remote.delete(participant);
  state.undecryptable.delete(participant);
  document.querySelector(`[data-participant="${CSS.escape(participant)}"]`)?.remove();
  showE2eeWarning();
  state.worker.postMessage({ type: 'peer-left', participant });
  // Rotate so the departed member cannot read what follows.
  if (state.e2ee) sendBlobs(await state.e2ee.peerLeft(participant));
  refreshSecurity();
}

// --- Peer connection: perfect negotiation, we are the polite side --------------------------
async function startPeerConnection() {
  const config = hasScriptTransform ? {} : { encodedInsertableStreams: true };
  const pc = new RTCPeerConnection(config);
  state.pc = pc;
  pc.addEventListener('icecandidate', ({ candidate }) => {
    if (candidate) {
      send({
        type: 'candidate',
        candidate: { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex },
      });
    }
  });
  pc.addEventListener('negotiationneeded', async () => {
    if (state.pc !== pc) return;
    try {
      state.negotiation.makingOffer = true;
      const offer = await pc.createOffer();
      // Another description may have arrived meanwhile; it renegotiates anyway.
      if (pc.signalingState !== 'stable') return;
      const negotiated = [pc.currentRemoteDescription?.sdp, pc.currentLocalDescription?.sdp];
      await pc.setLocalDescription({ type: 'offer', sdp: alignExtmapIds(offer.sdp, negotiated) });
      send({ type: 'offer', sdp: pc.localDescription.sdp });
    } catch (e) {
      // An offer from the SFU overtook ours: once it is answered, negotiationneeded fires
      // again for whatever is still to negotiate.
      if (pc.signalingState === 'stable' && !(e instanceof DOMException && e.name === 'InvalidStateError')) {
        status(`Negotiation problem: ${e.message}`);
      }
    } finally {
      state.negotiation.makingOffer = false;
    }
  });
  pc.addEventListener('track', onTrack);
  // A connection that never comes up, or fails, is started over with a new media session
  // (same participant, same keys): nobody should have to reload the page for it.
  const watchdog = setTimeout(() => {
    if (state.pc === pc && pc.connectionState !== 'connected') restartMedia();
  }, CONNECT_WATCHDOG_MS);
  pc.addEventListener('connectionstatechange', () => {
    if (pc.connectionState === 'connected') clearTimeout(watchdog);
    if (pc.connectionState === 'failed' && state.pc === pc) restartMedia();
  });
  const audio = state.local.getAudioTracks()[0];
  const video = sentVideoTrack();
  if (audio) state.senders.audio = addSending(audio, 'audio');
  if (video) state.senders.video = addSending(video, 'video');
}

function addSending(track, kind) {
  const transceiver = state.pc.addTransceiver(track, { direction: 'sendonly', streams: [state.local] });
  if (kind === 'video') preferVp8(transceiver);
  offerOnlyUsedExtensions(transceiver);
  attachTransform(transceiver.sender, { operation: 'encrypt', kind });
  return transceiver.sender;
}

// VP8 keeps its payload header clear (key frames visible to the SFU); other codecs would
// need other rules, so video is VP8 only.
function preferVp8(transceiver) {
  const caps = RTCRtpSender.getCapabilities?.('video');
  if (!caps || !transceiver.setCodecPreferences) return;
  const codecs = caps.codecs.filter((c) => /^video\/(vp8|rtx)$/i.test(c.mimeType));
  if (codecs.some((c) => /vp8/i.test(c.mimeType))) transceiver.setCodecPreferences(codecs);
}

function offerOnlyUsedExtensions(transceiver) {
  if (!transceiver.getHeaderExtensionsToNegotiate || !transceiver.setHeaderExtensionsToNegotiate) return;
  const wanted = transceiver
    .getHeaderExtensionsToNegotiate()
    .map((e) => (sentExtension(e.uri) ? e : { ...e, direction: 'stopped' }));
  try {
    transceiver.setHeaderExtensionsToNegotiate(wanted);
  } catch {
    // Offering more than needed is harmless; alignExtmapIds keeps the ids consistent.
  }
}

async function onDescription(description) {
  const pc = state.pc;
  if (!pc) return;
  const n = state.negotiation;
  const readyForOffer = !n.makingOffer && (pc.signalingState === 'stable' || n.settingRemoteAnswer);
  const collision = description.type === 'offer' && !readyForOffer;
  // Polite: never ignore the SFU's offer; setRemoteDescription rolls our own offer back.
  if (collision && pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' });
  if (description.type === 'answer') {
    const role = currentDtlsRole(pc.currentLocalDescription, pc.currentRemoteDescription);
    description = { type: 'answer', sdp: keepDtlsRole(description.sdp, role) };
  }
  n.settingRemoteAnswer = description.type === 'answer';
  try {
    await pc.setRemoteDescription(description);
  } finally {
    n.settingRemoteAnswer = false;
  }
  for (const c of state.pendingCandidates.splice(0)) await pc.addIceCandidate(c).catch(() => {});
  if (description.type === 'offer') {
    await pc.setLocalDescription();
    send({ type: 'answer', sdp: pc.localDescription.sdp });
  }
}

async function onCandidate(candidate) {
  const pc = state.pc;
  if (!pc || !candidate) return;
  if (!pc.remoteDescription) {
    state.pendingCandidates.push(candidate);
    return;
  }
  await pc.addIceCandidate(candidate).catch(() => {});
}

function onTrack(event) {
  // The stream id is the publisher's participant id; the track id is its track.
  const participant = event.streams[0]?.id;
  if (!participant) return;
  const { receiver, track } = event;
  // A receiver can come back for a later track: createEncodedStreams works once per
  // receiver, and a script transform is replaced only if the sender changed.
  if (!state.transformed.has(receiver) || (hasScriptTransform && receiver.transform?.veilParticipant !== participant)) {
    attachTransform(receiver, { operation: 'decrypt', kind: track.kind, participant });
    if (hasScriptTransform) receiver.transform.veilParticipant = participant;
    state.transformed.add(receiver);
  }
  const tracks = state.remote.get(participant) || [];
  state.remote.set(participant, [...tracks.filter((t) => t !== track), track]);
  track.addEventListener('ended', () => forgetTrack(track));
  showRemote(participant);
}

// The tile shows a participant's audio and its newest video (each participant sends one
// video, camera or screen, on one sender; a newer one replaces an older after a rejoin).
function showRemote(participant) {
  const tracks = (state.remote.get(participant) || []).filter((t) => t.readyState === 'live');
  const video = tracks.filter((t) => t.kind === 'video').at(-1);
  const audio = tracks.filter((t) => t.kind === 'audio');
  const shown = state.streams.get(participant);
  const wanted = [...audio, ...(video ? [video] : [])];
  const same = shown && shown.getTracks().length === wanted.length && wanted.every((t) => shown.getTracks().includes(t));
  if (!same) state.streams.set(participant, new MediaStream(wanted));
  renderTile(participant);
}

function forgetTrack(track) {
  for (const [participant, tracks] of state.remote) {
    if (!tracks.includes(track)) continue;
    state.remote.set(participant, tracks.filter((t) => t !== track));
    showRemote(participant);
  }
}

// `track_unpublished` names the publisher's track, which is the received track's id.
function removeTrack(trackId) {
  for (const tracks of state.remote.values()) for (const t of tracks) if (t.id === trackId) forgetTrack(t);
}

/**
 * A new peer connection and media session for the same participant. Only while the
 * WebSocket is open: after a drop, resuming brings the session back instead.
 */
function restartMedia() {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  closePeerConnection();
  send({ type: 'rejoin' });
}

function closePeerConnection() {
  if (state.pc) state.pc.close();
  state.pc = null;
  state.senders = { audio: null, video: null };
  state.pendingCandidates = [];
  state.streams.clear();
  state.remote.clear();
}

function resetRoom() {
  state.e2ee = null;
  state.participant = null;
  state.names.clear();
  state.states.clear();
  state.undecryptable.clear();
  $('tiles').replaceChildren();
  $('e2ee-warning').hidden = true;
}

// --- Grid ------------------------------------------------------------------------------------
function renderTile(participant) {
  // Only members: late events (a decrypt status, a track) must not bring back the tile
  // of someone who left.
  if (!state.names.has(participant)) return;
  const tiles = $('tiles');
  let li = tiles.querySelector(`[data-participant="${CSS.escape(participant)}"]`);
  const own = participant === state.participant;
  if (!li) {
    li = document.createElement('li');
    li.className = 'tile';
    li.dataset.participant = participant;
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    if (own) video.muted = true;
    const name = document.createElement('span');
    name.className = 'name';
    const badges = document.createElement('span');
    badges.className = 'badges';
    li.append(video, name, badges);
    tiles.append(li);
  }
  const video = li.querySelector('video');
  const stream = own ? state.local : state.streams.get(participant);
  if (stream && video.srcObject !== stream) video.srcObject = stream;
  const name = state.names.get(participant) || 'Guest';
  const s = own ? state.media : state.states.get(participant) || {};
  li.querySelector('.name').textContent = own ? `${name} (you)` : name;
  const badges = [];
  if (s.audio_muted) badges.push(['Muted', '']);
  if (s.video_muted) badges.push(['Camera off', '']);
  if (s.screen_sharing) badges.push(['Sharing screen', '']);
  const rejected = !own && state.e2ee?.rejected(participant);
  if (rejected) badges.push(['Not verified: cannot decrypt', 'undecryptable']);
  else if (!own && state.undecryptable.has(participant)) badges.push(['Cannot decrypt', 'undecryptable']);
  li.querySelector('.badges').replaceChildren(
    ...badges.map(([text, cls]) => {
      const b = document.createElement('span');
      b.className = `badge ${cls}`.trim();
      b.textContent = text;
      return b;
    }),
  );
  const label = [own ? `${name} (you)` : name, ...badges.map((b) => b[0])].join(', ');
  li.setAttribute('aria-label', label);
  showE2eeWarning();
}

// Shown when there are others and this page can decrypt none of them (wrong or
// truncated key in the link); one undecryptable member only gets its tile's badge.
function showE2eeWarning() {
  const others = [...state.names.keys()].filter((id) => id !== state.participant);
  const unreadable = (id) => state.undecryptable.has(id) || !!state.e2ee?.rejected(id);
  $('e2ee-warning').hidden = !(others.length > 0 && others.every(unreadable));
}

async function refreshSecurity() {
  if (!state.e2ee) return;
  $('code').textContent = await state.e2ee.securityCode();
  for (const id of state.names.keys()) renderTile(id);
}

// Active speaker from the receivers' decoded audio (the level header extension stays
// clear for the SFU, but this reads what was actually decrypted and decoded): the mean
// power over the last poll interval, from the growth of totalAudioEnergy and
// totalSamplesDuration. An instantaneous audioLevel sampled every 500 ms misses short
// sounds and can stay out of phase with periodic ones.
const SPEAKING_POWER = 0.02 ** 2; // mean power of a signal at 2 % of full scale
const lastEnergy = new WeakMap(); // receiver → {energy, duration}

async function pollSpeakers() {
  const pc = state.pc;
  if (!pc) return;
  let loudest = null;
  let loudestPower = SPEAKING_POWER;
  for (const r of pc.getReceivers()) {
    if (r.track.kind !== 'audio') continue;
    const participant = [...state.remote].find(([, tracks]) => tracks.includes(r.track))?.[0];
    if (!participant) continue;
    for (const st of (await r.getStats()).values()) {
      if (st.type !== 'inbound-rtp' || typeof st.totalAudioEnergy !== 'number') continue;
      const now = { energy: st.totalAudioEnergy, duration: st.totalSamplesDuration || 0 };
      const before = lastEnergy.get(r);
      lastEnergy.set(r, now);
      const elapsed = before ? now.duration - before.duration : 0;
      const power = elapsed > 0 ? (now.energy - before.energy) / elapsed : 0;
      if (power > loudestPower) {
        loudestPower = power;
        loudest = participant;
      }
    }
  }
  for (const li of $('tiles').children) li.classList.toggle('speaking', li.dataset.participant === loudest);
}

// --- Controls -------------------------------------------------------------------------------
function setPressed(button, pressed, onText, offText) {
  button.setAttribute('aria-pressed', String(pressed));
  button.textContent = pressed ? onText : offText;
}

function publishState() {
  send({ type: 'state', state: state.media });
  renderTile(state.participant);
}

$('mute').addEventListener('click', () => {
  state.media.audio_muted = !state.media.audio_muted;
  for (const t of state.local.getAudioTracks()) t.enabled = !state.media.audio_muted;
  setPressed($('mute'), state.media.audio_muted, 'Unmute microphone', 'Mute microphone');
  publishState();
});

$('camera-toggle').addEventListener('click', () => {
  state.media.video_muted = !state.media.video_muted;
  for (const t of state.local.getVideoTracks()) t.enabled = !state.media.video_muted;
  setPressed($('camera-toggle'), state.media.video_muted, 'Turn camera on', 'Turn camera off');
  publishState();
});

$('share').addEventListener('click', async () => {
  if (state.screen) {
    stopSharing();
    return;
  }
  try {
    state.screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch {
    status('Screen sharing was not started.', { transient: true });
    return;
  }
  const track = state.screen.getVideoTracks()[0];
  track.addEventListener('ended', stopSharing);
  await sendVideo();
  state.media.screen_sharing = true;
  setPressed($('share'), true, 'Stop sharing screen', 'Share screen');
  publishState();
});

// One video per participant: the shared screen while there is one, else the camera. The
// screen replaces the camera on the same sender, so sharing needs no renegotiation and
// the others need not tell a screen track from a camera track (the SFU gives no hint,
// and a second track would linger: webrtc-rs 0.21 sees no end when a renegotiation
// stops a track).
function sentVideoTrack() {
  return state.screen?.getVideoTracks()[0] || state.local?.getVideoTracks()[0] || null;
}

async function sendVideo() {
  if (state.senders.video) await state.senders.video.replaceTrack(sentVideoTrack());
}

function stopSharing() {
  if (!state.screen) return;
  for (const t of state.screen.getTracks()) t.stop();
  state.screen = null;
  sendVideo().catch(() => {});
  state.media.screen_sharing = false;
  setPressed($('share'), false, 'Stop sharing screen', 'Share screen');
  publishState();
}

$('copy-link').addEventListener('click', async () => {
  // The link keeps its #fragment: that is the meeting's key, shared only person to person.
  try {
    await navigator.clipboard.writeText(location.href);
    status('Invite link copied. Anyone with it can join and decrypt this meeting.', { transient: true });
  } catch {
    status('Could not copy; copy the address bar instead (including the part after #).', { transient: true });
  }
});

$('leave').addEventListener('click', () => {
  state.leaving = true;
  send({ type: 'leave' });
  end('You left the meeting.');
});

function end(reason) {
  state.leaving = true;
  if (state.ws) state.ws.close();
  closePeerConnection();
  if (state.local) for (const t of state.local.getTracks()) t.stop();
  if (state.screen) for (const t of state.screen.getTracks()) t.stop();
  if (state.worker) state.worker.terminate();
  $('room').hidden = true;
  $('prejoin').hidden = true;
  $('ended').hidden = false;
  $('ended-reason').textContent = reason;
}

// --- Start ------------------------------------------------------------------------------------
async function main() {
  if (!room) {
    fatal('This is not a meeting link.');
    return;
  }
  try {
    parseSecret(secret);
  } catch {
    fatal('This meeting link has no valid key after the # sign. Ask for the full invite link.');
    $('join').disabled = true;
    return;
  }
  if (!hasScriptTransform && !hasEncodedStreams) {
    fatal('This browser cannot encrypt media end to end (no Encoded Transform support), so it cannot join.');
    $('join').disabled = true;
    return;
  }
  state.worker = new Worker('/assets/e2ee-worker.js', { type: 'module', name: 'veil-e2ee' });
  state.worker.addEventListener('message', (ev) => {
    const m = ev.data;
    if (m.type !== 'decrypt-status' || !state.names.has(m.participant)) return;
    if (m.ok) state.undecryptable.delete(m.participant);
    else state.undecryptable.add(m.participant);
    renderTile(m.participant);
  });
  $('camera').addEventListener('change', () => openDevices().catch((e) => status(e.message)));
  $('microphone').addEventListener('change', () => openDevices().catch((e) => status(e.message)));
  const devices = openDevices().catch((e) => status(`Camera or microphone unavailable: ${e.message}`));
  // Listening before the devices are open: a quick Join must not submit the form natively
  // (a navigation that would lose the key in the fragment).
  $('join-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = $('display-name').value.trim();
    if (!name) return;
    $('join').disabled = true;
    await devices;
    if (!state.local) {
      status('A camera and microphone are needed to join.');
      $('join').disabled = false;
      return;
    }
    try {
      await join(name);
      $('prejoin').hidden = true;
      $('room').hidden = false;
      $('mute').focus();
      setInterval(() => pollSpeakers().catch(() => {}), 500);
    } catch (e) {
      status(e.message);
      $('join').disabled = false;
    }
  });
}

main();
