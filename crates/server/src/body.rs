//! Reading a request body under a size limit and a total deadline.

use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;

pub(crate) enum BodyError {
    TooLarge,
    Deadline,
    Broken,
}

/// Collects `body`, refusing more than `limit` bytes or taking longer than
/// `deadline` in total (an idle timeout would let a trickling client hold
/// the connection forever).
pub(crate) async fn read_body(
    body: Body,
    limit: usize,
    deadline: Duration,
) -> Result<Vec<u8>, BodyError> {
    let collect = async move {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Broken)?;
            if let Some(data) = frame.data_ref() {
                if out.len() + data.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                out.extend_from_slice(data);
            }
        }
        Ok(out)
    };
    tokio::time::timeout(deadline, collect)
        .await
        .unwrap_or(Err(BodyError::Deadline))
}
