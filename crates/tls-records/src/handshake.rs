//! The handshake, by rustls' unbuffered API, and the hand-over to a [`Session`].

use rustls::{
    client::{ClientConnectionData, UnbufferedClientConnection},
    server::{ServerConnectionData, UnbufferedServerConnection},
    unbuffered::{ConnectionState, EncodeError, UnbufferedStatus},
    ExtractedSecrets,
};

use crate::{
    capture::{self, TrafficSecrets},
    Error, Session,
};

/// The most handshake input kept waiting for the rest of a record (a ClientHello with
/// every extension fits many times over).
const HANDSHAKE_INPUT_MAX: usize = 64 * 1024;

/// A rustls unbuffered connection, server or client: what [`Handshake`] drives.
pub trait Unbuffered {
    /// `ServerConnectionData` or `ClientConnectionData`.
    type Data;
    /// Which end it is.
    const CLIENT: bool;
    /// rustls' `process_tls_records`.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// Whether the handshake is still under way.
    fn is_handshaking(&self) -> bool;
    /// The keys and sequence numbers rustls has reached (its connection is dropped).
    fn into_secrets(self) -> Result<ExtractedSecrets, Error>;
}

/// The trait for one of rustls' two unbuffered connections, whose methods have the same
/// names but are not one trait in rustls.
macro_rules! unbuffered {
    ($conn:ty, $data:ty, $client:expr) => {
        impl Unbuffered for $conn {
            type Data = $data;
            const CLIENT: bool = $client;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn is_handshaking(&self) -> bool {
                (**self).is_handshaking()
            }
            fn into_secrets(self) -> Result<ExtractedSecrets, Error> {
                Ok(self.dangerous_into_kernel_connection()?.0)
            }
        }
    };
}

unbuffered!(UnbufferedServerConnection, ServerConnectionData, false);
unbuffered!(UnbufferedClientConnection, ClientConnectionData, true);

/// A handshake under way: rustls' connection and the input it has not consumed.
pub struct Handshake<C> {
    conn: Option<C>,
    incoming: Vec<u8>,
    /// The traffic secrets, once rustls has logged them.
    secrets: TrafficSecrets,
    /// Application data rustls opened at the handshake's end.
    plaintext: Vec<u8>,
}

/// Where a handshake is after some input.
pub enum Advance {
    /// It needs more input from the peer.
    Handshaking,
    /// It is done: go on with the session.
    Established(Box<Established>),
}

/// A finished handshake.
pub struct Established {
    /// The session, which seals and opens every record from here on.
    pub session: Session,
    /// Application data rustls opened before the hand-over (it came with the peer's last
    /// handshake flight).
    pub plaintext: Vec<u8>,
    /// Input after the last whole record: the start of one the session opens.
    pub rest: Vec<u8>,
}

impl<C: Unbuffered> Handshake<C> {
    /// Starts a handshake on `conn` (for a server, made with secret extraction enabled).
    pub fn new(conn: C) -> Handshake<C> {
        Handshake {
            conn: Some(conn),
            incoming: Vec::new(),
            secrets: TrafficSecrets::default(),
            plaintext: Vec::new(),
        }
    }

    /// Feeds the peer's `input` and appends what must be sent back to `out` (a client's
    /// first call, with no input, writes its ClientHello). After `Established` the
    /// handshake is spent.
    pub fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Advance, Error> {
        // What rustls logs during this call is this handshake's (calls on one thread do
        // not interleave).
        drop(capture::take());
        let advanced = self.process(input, out);
        self.secrets.merge(capture::take());
        if !advanced? {
            return Ok(Advance::Handshaking);
        }
        let conn = self
            .conn
            .take()
            .expect("a finished handshake had its connection");
        let secrets = conn.into_secrets()?;
        let (Some(client), Some(server)) = (&self.secrets.client, &self.secrets.server) else {
            return Err(Error::Unexpected(
                "no traffic secrets: the config lacks key_log()",
            ));
        };
        let ours = match C::CLIENT {
            true => (&client[..], &server[..]),
            false => (&server[..], &client[..]),
        };
        Ok(Advance::Established(Box::new(Established {
            session: Session::new(secrets, ours, C::CLIENT)?,
            plaintext: std::mem::take(&mut self.plaintext),
            rest: std::mem::take(&mut self.incoming),
        })))
    }

    /// Runs rustls over the input; whether the handshake is done.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, Error> {
        if self.incoming.len() + input.len() > HANDSHAKE_INPUT_MAX {
            return Err(Error::HandshakeTooLarge(HANDSHAKE_INPUT_MAX));
        }
        self.incoming.extend_from_slice(input);
        let conn = self
            .conn
            .as_mut()
            .ok_or(Error::Unexpected("a spent handshake"))?;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process(&mut self.incoming);
            let done = match state? {
                ConnectionState::EncodeTlsData(mut encode) => {
                    let start = out.len();
                    out.resize(start + 4096, 0);
                    let written = match encode.encode(&mut out[start..]) {
                        Err(EncodeError::InsufficientSize(need)) => {
                            out.resize(start + need.required_size, 0);
                            encode.encode(&mut out[start..])
                        }
                        other => other,
                    };
                    let written = written
                        .map_err(|_| Error::Unexpected("a record rustls could not encode"))?;
                    out.truncate(start + written);
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done(); // the caller sends `out`
                    false
                }
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(record) = read.next_record() {
                        let record = record?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    false
                }
                ConnectionState::BlockedHandshake => {
                    self.incoming.drain(..discard);
                    return Ok(false);
                }
                ConnectionState::WriteTraffic(_) => true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(Error::Unexpected("a close during the handshake"))
                }
                _ => return Err(Error::Unexpected("early data")),
            };
            self.incoming.drain(..discard);
            if done {
                // A server may write before the client's Finished: wait for it.
                return Ok(!conn.is_handshaking());
            }
        }
    }
}
