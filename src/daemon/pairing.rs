//! The pairing ceremony (`p2p pair`), run on the client's connection: a code from the
//! rendezvous (or the one typed), SPAKE2 with pairing's own identities, the two devices'
//! signed introductions, each person's decision, and the pairing stored only if both said
//! yes. The connection is the ceremony: a client that leaves cancels it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::info;

use super::connection::FRAME_LIMIT;
use super::jobs::{Context, signal_failure};
use crate::devices::identity::fingerprint;
use crate::devices::mailbox::PairSecret;
use crate::devices::pairing::{PAIR_IDENTITIES, PairMessage, check_peer, introduce};
use crate::ipc::codec::{CodecError, read_frame_within, write_frame};
use crate::ipc::messages::{ClientFrame, ErrorKind, Request, ServerFrame};
use crate::rendezvous::{Code, Role, Session};
use crate::terminal::escape_controls;

/// How long each person has to compare and answer.
pub const DECISION_LIMIT: Duration = Duration::from_secs(10 * 60);
/// How often a side whose person is still comparing says so: well inside the
/// rendezvous's two minutes of allowed silence.
const KEEPALIVE: Duration = Duration::from_secs(45);

fn error(kind: ErrorKind, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        kind,
        message: message.into(),
    }
}

/// Runs one pairing on `stream` and writes its last frame.
pub async fn pair<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    context: &Context,
    code: Option<String>,
) -> Result<(), CodecError> {
    let last = match run(stream, context, code).await {
        Ok(frame) => frame,
        Err(Outcome::Frame(frame)) => *frame,
        Err(Outcome::Codec(e)) => return Err(e),
    };
    write_frame(stream, &last).await
}

enum Outcome {
    Frame(Box<ServerFrame>),
    Codec(CodecError),
}

impl From<CodecError> for Outcome {
    fn from(e: CodecError) -> Outcome {
        Outcome::Codec(e)
    }
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> Outcome {
    Outcome::Frame(Box::new(error(kind, message)))
}

/// What a joiner hears when someone else claimed its pairing code first.
const CROWDED: &str = "someone else joined this pairing first: if the other device now lists a device that is not this one, run p2p unpair NAME there, then p2p pair again";

/// A rendezvous failure in pairing's words: the transfer's would send people to `p2p send`.
fn signal(e: crate::rendezvous::SignalError) -> Outcome {
    use crate::rendezvous::SignalError;
    let failure = signal_failure(&e);
    let message = match e {
        SignalError::WrongCode { .. } => {
            "wrong code, or someone tried to guess it: run p2p pair again for a new code"
        }
        SignalError::UnknownCode => {
            "no pairing is waiting for that code: check it, or run p2p pair on the other device for a new one"
        }
        SignalError::Expired => {
            "the code expired before the other device used it: run p2p pair again"
        }
        SignalError::Abandoned { .. } => {
            "someone took the code without completing the key exchange (a guess, or an attempt to block the pairing): run p2p pair again for a new code"
        }
        SignalError::PeerGone => "the other device went away before the pairing completed",
        // A third party with the code got there first; if the other device's person
        // skipped the fingerprint, it is now paired with them (issue #23).
        SignalError::Crowded => CROWDED,
        _ => return fail(failure.kind, failure.message),
    };
    fail(failure.kind, message)
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    context: &Context,
    code: Option<String>,
) -> Result<ServerFrame, Outcome> {
    let (role, code, client) = match code {
        None => {
            let mut client = context.rendezvous_url.connect().await.map_err(signal)?;
            let (nameplate, _) = client.allocate().await.map_err(signal)?;
            let code = Code::generate(nameplate);
            write_frame(
                stream,
                &ServerFrame::PairCode {
                    code: code.to_string(),
                },
            )
            .await?;
            (Role::Sender, code, client)
        }
        Some(text) => {
            let code: Code = text.parse().map_err(|e: crate::rendezvous::CodeError| {
                fail(ErrorKind::BadRequest, e.to_string())
            })?;
            let mut client = context.rendezvous_url.connect().await.map_err(signal)?;
            client.claim(code.nameplate).await.map_err(signal)?;
            (Role::Receiver, code, client)
        }
    };
    let bad = |_| {
        fail(
            ErrorKind::Protocol,
            "the other device sent a malformed pairing message",
        )
    };
    // Waiting for the other device and meeting it: the client sends nothing meanwhile, so
    // anything it does — above all leaving (Ctrl-C) — ends the pairing and frees the code.
    let meet = async {
        let mut client = client;
        if role == Role::Sender {
            context
                .rendezvous_url
                .wait_for_peer(&mut client)
                .await
                .map_err(signal)?;
        }
        let mut session = Session::establish_with(client, role, &code, Some(PAIR_IDENTITIES))
            .await
            .map_err(signal)?;
        let binding = session.binding_key();
        let ours = introduce(
            &context.identity,
            &context.config.device_name,
            &binding,
            role,
        );
        let peer_role = match role {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        };
        session
            .send(&serde_json::to_vec(&ours).map_err(|_| bad(()))?)
            .await
            .map_err(signal)?;
        let theirs: PairMessage =
            serde_json::from_slice(&session.recv().await.map_err(signal)?).map_err(|_| bad(()))?;
        let (name, key) = check_peer(&theirs, &binding, peer_role)
            .map_err(|e| fail(ErrorKind::Protocol, e.to_string()))?;
        let secret = PairSecret::from_pairing(&binding);
        Ok::<_, Outcome>((session, name, key, secret))
    };
    let left = async {
        let mut byte = [0u8; 1];
        let _ = stream.read(&mut byte).await;
    };
    let (mut session, name, key, secret) = tokio::select! {
        met = meet => met?,
        _ = left => return Err(fail(ErrorKind::Cancelled, "the pairing was cancelled on this side")),
    };
    let shown = fingerprint(&key);
    write_frame(
        stream,
        &ServerFrame::PairPeer {
            name: escape_controls(&name),
            fingerprint: shown.clone(),
        },
    )
    .await?;
    // The person compares; anything but a yes (or leaving) is a no.
    let answer = read_frame_within::<ClientFrame, _>(stream, Some(DECISION_LIMIT), FRAME_LIMIT);
    tokio::pin!(answer);
    let waiting = serde_json::to_vec(&PairMessage::Waiting).map_err(|_| bad(()))?;
    let accept = loop {
        tokio::select! {
            answer = &mut answer => break matches!(
                answer,
                Ok(Some(ClientFrame::Request(Request::Confirm { accept: true })))
            ),
            _ = tokio::time::sleep(KEEPALIVE) => session.send(&waiting).await.map_err(signal)?,
        }
    };
    session
        .send(&serde_json::to_vec(&PairMessage::Decision { accept }).map_err(|_| bad(()))?)
        .await
        .map_err(signal)?;
    let their_decision = tokio::time::timeout(DECISION_LIMIT, async {
        loop {
            let message = session.recv().await?;
            if !matches!(serde_json::from_slice(&message), Ok(PairMessage::Waiting)) {
                return Ok(message);
            }
        }
    })
    .await
    .map_err(|_| {
        fail(
            ErrorKind::Expired,
            "the other device did not answer within 10 minutes: not paired",
        )
    })?
    .map_err(signal)?;
    session.close().await;
    let their_accept = matches!(
        serde_json::from_slice(&their_decision),
        Ok(PairMessage::Decision { accept: true })
    );
    if !accept {
        return Ok(error(ErrorKind::Declined, "not paired: you said no"));
    }
    if !their_accept {
        return Ok(error(
            ErrorKind::Declined,
            "not paired: the other device's person said no",
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let devices = context.devices.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let mut registry = devices.lock().unwrap_or_else(|p| p.into_inner());
        registry.add(&name, &key, secret, now)
    })
    .await
    .map_err(|_| fail(ErrorKind::Io, "saving the pairing stopped"))?
    .map_err(|e| {
        fail(
            ErrorKind::Io,
            format!("cannot save the pairing in the state directory: {e}"),
        )
    })?;
    info!(fingerprint = %shown, "paired a device");
    Ok(ServerFrame::Paired {
        name: escape_controls(&stored),
        fingerprint: shown,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_comparing_side_speaks_well_within_the_rendezvous_silence_limit() {
        assert!(super::KEEPALIVE * 2 <= crate::rendezvous::server::PAIRED_IDLE_TIMEOUT);
    }

    #[test]
    fn a_joiner_beaten_to_the_code_is_told_to_check_and_unpair() {
        let super::Outcome::Frame(frame) = super::signal(crate::rendezvous::SignalError::Crowded)
        else {
            panic!("a frame expected");
        };
        let crate::ipc::messages::ServerFrame::Error { message, .. } = *frame else {
            panic!("an error expected");
        };
        assert!(
            message.starts_with("someone else joined this pairing first"),
            "{message}"
        );
        assert!(message.contains("p2p unpair"), "{message}");
        assert!(!message.contains("two other parties"), "{message}");
    }

    #[test]
    fn a_pairing_fits_the_rendezvous_lifetime_and_budget_of_a_pair() {
        use crate::rendezvous::pair::{PAIR_LIFETIME, RelayBudget};
        // Both people take the whole decision time, then the decisions cross.
        assert!(super::DECISION_LIMIT + std::time::Duration::from_secs(30) <= PAIR_LIFETIME);
        // Keepalives for that long, plus the key exchange, introductions and decisions.
        let keepalives = super::DECISION_LIMIT.as_secs() / super::KEEPALIVE.as_secs() + 1;
        assert!(keepalives + 16 <= u64::from(RelayBudget::default().messages));
    }
}
