//! Requests and answers between peers inside session frames.
//!
//! Every plaintext starts with a **label**: one length byte, then the
//! route's path for a request (`/p2p/message`), or the path and `<` for
//! its answer (`/p2p/message<`). A frame is therefore only good for the
//! route it was sealed for, and an answer can never be played back as a
//! request (the two directions of requests and answers share one key per
//! direction: a node's answers and its own requests are both sealed with
//! its send key). The frame layer's AEAD covers the label.
//!
//! An answer is also **bound to its request**: its associated data is the
//! frame header followed by `"openred/v1/answer-to" || request seq (u64
//! BE)`, the `seq` of the request frame it answers (unique per direction
//! and session). An answer therefore opens only as the answer to that one
//! request: two answers swapped on the path both fail to authenticate
//! (and, failing, mark nothing seen in the replay window).

use openred_core::error_code::ErrorCode;
use std::ops::Deref;
use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use openred_core::session::{FrameHeader, Session};
use openred_core::UnixTime;
use openred_http::ApiError;

use crate::directory_client::expect_ok;
use crate::error::NodeError;
use crate::peer::sessions::LiveSession;
use crate::peer::PeerLayer;

const ANSWER: u8 = b'<';

/// What an answer's associated data adds to its header, before the
/// request's seq.
const ANSWER_BINDING_LABEL: &[u8] = b"openred/v1/answer-to";

/// The associated data an answer to the request frame `request_seq`
/// adds to its header.
pub fn answer_binding(request_seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ANSWER_BINDING_LABEL.len() + 8);
    out.extend_from_slice(ANSWER_BINDING_LABEL);
    out.extend_from_slice(&request_seq.to_be_bytes());
    out
}

/// Opens `answer` as the answer on `path` to the request frame
/// `request_seq` this node sealed in `session`: authenticated with the
/// binding to the request, then unlabelled. Returns the payload.
pub fn open_answer(
    session: &Session,
    path: &str,
    request_seq: u64,
    answer: &[u8],
    now: UnixTime,
) -> Result<Vec<u8>, NodeError> {
    let plaintext = session.open_bound(answer, &answer_binding(request_seq), now)?;
    Ok(unlabel(path, true, &plaintext)
        .ok_or(NodeError::Malformed("an answer sealed for another route"))?
        .to_vec())
}

/// A request frame opened by [`PeerLayer::open_frame`]: its session (what
/// it dereferences to) and the request's identity, which the answer
/// binds ([`PeerLayer::answer_frame`]).
pub struct Incoming {
    live: Arc<LiveSession>,
    request_seq: u64,
}

impl Incoming {
    /// The session the request came in.
    pub fn session(&self) -> &Arc<LiveSession> {
        &self.live
    }

    /// The request frame's `seq`, which its answer binds.
    pub fn request_seq(&self) -> u64 {
        self.request_seq
    }
}

impl Deref for Incoming {
    type Target = Arc<LiveSession>;

    fn deref(&self) -> &Arc<LiveSession> {
        &self.live
    }
}

/// `label(path, answer) || payload`.
pub fn labelled(path: &str, answer: bool, payload: &[u8]) -> Vec<u8> {
    let len = path.len() + usize::from(answer);
    let mut out = Vec::with_capacity(1 + len + payload.len());
    out.push(u8::try_from(len).unwrap_or(u8::MAX));
    out.extend_from_slice(path.as_bytes());
    if answer {
        out.push(ANSWER);
    }
    out.extend_from_slice(payload);
    out
}

/// The payload after the label, if the label is `path`'s (request or
/// answer as `answer` says).
pub fn unlabel<'a>(path: &str, answer: bool, plaintext: &'a [u8]) -> Option<&'a [u8]> {
    let (&len, rest) = plaintext.split_first()?;
    let (label, payload) = rest.split_at_checked(usize::from(len))?;
    let (route, marker) = if answer {
        label
            .split_last()
            .filter(|(m, _)| **m == ANSWER)
            .map(|(_, r)| (r, true))?
    } else {
        (label, false)
    };
    (route == path.as_bytes() && marker == answer).then_some(payload)
}

impl PeerLayer {
    /// Opens a request frame sent to `path`: finds its session, checks it
    /// (one AEAD, the replay window) and its label, and counts the peer's
    /// first frame on a new session as its confirmation. Returns the
    /// session with the request's identity, and the payload.
    pub fn open_frame(&self, path: &str, body: &[u8]) -> Result<(Incoming, Vec<u8>), ApiError> {
        if body.len() > self.config.max_frame_bytes + 64 + 256 {
            return Err(ApiError::new(ErrorCode::FrameTooLarge, "frame too large"));
        }
        let (header, _) = FrameHeader::parse(body).map_err(frame_error)?;
        let live = self.sessions.get(&header.session_id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownSession,
                "no such session; handshake again",
            )
        })?;
        let now = self.clock.now();
        let plaintext = live.session.open(body, now).map_err(frame_error)?;
        let payload = unlabel(path, false, &plaintext)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::WrongRoute,
                    "this frame was sealed for another route",
                )
            })?
            .to_vec();
        self.sessions.confirm(&live);
        live.touch(now);
        let request_seq = header.seq;
        Ok((Incoming { live, request_seq }, payload))
    }

    /// The answer to `request` on `path`: `payload` in a frame of its
    /// session, bound to the request.
    pub fn answer_frame(
        &self,
        request: &Incoming,
        path: &str,
        payload: &[u8],
    ) -> Result<Response, ApiError> {
        let now: UnixTime = self.clock.now();
        let frame = request
            .session
            .seal_bound(
                &labelled(path, true, payload),
                &answer_binding(request.request_seq),
                now,
            )
            .map_err(frame_error)?;
        Ok(([(header::CONTENT_TYPE, "application/octet-stream")], frame).into_response())
    }

    /// Sends `payload` to `path` on the peer of `live`, sealed in a frame
    /// of that session, and opens the peer's answer (a frame of the same
    /// session, labelled as the answer on `path`).
    pub async fn exchange(
        &self,
        live: &LiveSession,
        path: &'static str,
        payload: &[u8],
    ) -> Result<Vec<u8>, NodeError> {
        let frame = live
            .session
            .seal(&labelled(path, false, payload), self.clock.now())?;
        let request_seq = FrameHeader::parse(&frame)?.0.seq;
        let response = self
            .outbound
            .post_bytes(
                &live.peer_record.record().api_url,
                path,
                frame,
                "application/octet-stream",
            )
            .await?;
        if !response.is_success() {
            return Err(expect_ok::<serde_json::Value>(response, false)
                .err()
                .unwrap_or(NodeError::Malformed("the peer")));
        }
        let now = self.clock.now();
        let payload = open_answer(&live.session, path, request_seq, &response.body, now)?;
        live.touch(now);
        Ok(payload)
    }
}

/// The answer to a refused frame. The reason is given: it tells an
/// attacker nothing it did not send itself.
pub fn frame_error(e: openred_core::session::FrameError) -> ApiError {
    ApiError::new(ErrorCode::BadFrame, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_opens_only_for_its_route_and_direction() {
        let request = labelled("/p2p/message", false, b"hi");
        assert_eq!(unlabel("/p2p/message", false, &request), Some(&b"hi"[..]));
        assert_eq!(unlabel("/p2p/message", true, &request), None);
        assert_eq!(unlabel("/p2p/ping", false, &request), None);
        assert_eq!(unlabel("/p2p/messag", false, &request), None);
        let answer = labelled("/p2p/message", true, b"ok");
        assert_eq!(unlabel("/p2p/message", true, &answer), Some(&b"ok"[..]));
        assert_eq!(unlabel("/p2p/message", false, &answer), None);
        for bad in [&b""[..], &[200, b'/'][..], &[0][..]] {
            assert_eq!(unlabel("/p2p/message", false, bad), None);
        }
        assert_eq!(unlabel("", false, &[0]), Some(&b""[..]));
    }
}
