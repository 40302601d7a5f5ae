// SDP repairs the meeting page applies to its own offers before setting them. An ES
// module with no imports, usable in a page and in node (web/test/sdp.test.mjs).
//
// Owns: keeping each RTP header extension on one id across the whole (bundled) offer.
// Must never: touch anything but `a=extmap` lines, or change the id of an extension that
// is already negotiated.

const EXTMAP = /^a=extmap:(\d+)(\/[a-z]+)?\s+(\S+)(.*)$/;

/** Every `a=extmap` of an SDP as {id, uri}, in order. */
export function extmaps(sdp) {
  const out = [];
  for (const line of String(sdp || '').split(/\r?\n/)) {
    const m = EXTMAP.exec(line);
    if (m) out.push({ id: Number(m[1]), uri: m[3] });
  }
  return out;
}

/**
 * Gives every header extension in `offer` one id across all its media sections: the id
 * it already has in a `negotiated` description (the SFU's choice first), else the highest
 * free one-byte id (14 down to 1, then 16–255, which `a=extmap-allow-mixed` allows).
 *
 * Why: Chromium (checked with 156) gives the m-lines it adds to a connection its own
 * default ids even where the SFU already uses those ids for other extensions in the same
 * BUNDLE, and setLocalDescription then fails ("A BUNDLE group contains a codec collision
 * for header extension id=2"), so a page that joined after others could never publish.
 * The SFU (webrtc-rs) numbers the extensions it offers upwards from 1 and reuses the ids
 * of extensions once negotiated, so ids taken from the top do not collide with ids it
 * has yet to offer.
 */
export function alignExtmapIds(offer, negotiated = []) {
  const byUri = new Map();
  const byId = new Map();
  const claim = (id, uri) => {
    byUri.set(uri, id);
    byId.set(id, uri);
  };
  for (const sdp of negotiated) {
    for (const { id, uri } of extmaps(sdp)) if (!byUri.has(uri) && !byId.has(id)) claim(id, uri);
  }
  const free = () => {
    for (let id = 14; id >= 1; id--) if (!byId.has(id)) return id;
    for (let id = 16; id <= 255; id++) if (!byId.has(id)) return id;
    throw new Error('no free RTP header extension id');
  };
  const eol = offer.includes('\r\n') ? '\r\n' : '\n';
  return offer
    .split(eol)
    .map((line) => {
      const m = EXTMAP.exec(line);
      if (!m) return line;
      const [, , direction = '', uri, rest] = m;
      let id = byUri.get(uri);
      if (id === undefined) {
        id = free();
        claim(id, uri);
      }
      return `a=extmap:${id}${direction} ${uri}${rest}`;
    })
    .join(eol);
}

/**
 * Whether the page offers the RTP header extension `uri` on what it sends: MID, RTP
 * stream ids, audio level and transport-wide congestion control (matched by its draft's
 * name; its URI is an identifier, never fetched). Chromium offers more, which the SFU
 * neither uses nor forwards. Video orientation is left out on purpose: without it the
 * browser rotates the picture before encoding, so nothing about it travels outside the
 * encrypted frame.
 */
export function sentExtension(uri) {
  return (
    /^urn:ietf:params:rtp-hdrext:(sdes:mid|sdes:rtp-stream-id|sdes:repaired-rtp-stream-id|ssrc-audio-level)$/.test(uri) ||
    /\/draft-holmer-rmcat-transport-wide-cc-extensions-01$/.test(uri)
  );
}

/**
 * `answer` with its `a=setup` lines turned to keep the DTLS roles already in force, given
 * this side's current role: 'active' (DTLS client) or 'passive' (server); unchanged if
 * the role is not known yet.
 *
 * Why: when the SFU offered first, the page answered `active` and is the DTLS client.
 * The SFU (webrtc-rs 0.21) answers the page's later offers (`actpass`, as JSEP requires)
 * with `active` again instead of keeping the roles (RFC 8842 §5.5), and Chromium then
 * refuses the whole answer ("Failed to set SSL role for the transport"). The DTLS session
 * is already up and neither side changes it, so the answer can only mean the roles in
 * force.
 */
export function keepDtlsRole(answer, ourRole) {
  const theirs = { active: 'passive', passive: 'active' }[ourRole];
  if (!theirs) return answer;
  return answer.replace(/^a=setup:(active|passive)(?=\r?$)/gm, `a=setup:${theirs}`);
}

/** This side's DTLS role from the descriptions in force: 'active', 'passive' or null. */
export function currentDtlsRole(localDescription, remoteDescription) {
  const setup = (d) => /^a=setup:(active|passive)\r?$/m.exec(d?.sdp || '')?.[1] ?? null;
  if (localDescription?.type === 'answer') return setup(localDescription);
  if (remoteDescription?.type === 'answer') {
    const remote = setup(remoteDescription);
    return remote && (remote === 'active' ? 'passive' : 'active');
  }
  return null;
}
