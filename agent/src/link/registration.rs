//! Registration: one connection without a client certificate that trades the
//! bootstrap token and a fresh public key for a certificate and the key set.

use std::time::Instant;

use flotilla_common::frame::FrameDecoder;
use flotilla_common::message::{Channel, Register};
use flotilla_common::protocol::{AgentEvent, AgentSession, Timing};

use super::{Agent, Applier, Attempt, Error, HUB_SERVER_NAME, client_config};
use crate::identity::{self, Identity};

impl<A: Applier> Agent<A> {
    pub(super) async fn connect(
        &self,
        config: quinn::ClientConfig,
    ) -> std::result::Result<quinn::Connection, Attempt> {
        let connecting = self
            .endpoint
            .connect_with(config, self.config.hub, HUB_SERVER_NAME)
            .map_err(|e| Attempt::Connect(e.to_string()))?;
        connecting
            .await
            .map_err(|e| Attempt::Connect(e.to_string()))
    }

    pub(super) async fn register(&self) -> std::result::Result<Identity, Attempt> {
        let token = self.config.token.clone().ok_or(Error::NoToken)?;
        let key = identity::new_key().map_err(Error::from)?;
        let config = client_config(
            &self.config.ca_fingerprint,
            None,
            self.config.keep_alive,
            self.config.idle_timeout,
        )?;
        let connection = self.connect(config).await?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| Attempt::Ended(e.to_string()))?;
        let mut session = AgentSession::new(Timing::default(), Vec::new(), Vec::new());
        session.handle_connected_to_register(
            Instant::now(),
            Register {
                token,
                public_key: key.public_key,
                facts: self.config.facts.clone(),
            },
        );
        while let Some(transmit) = session.poll_transmit() {
            let bytes = transmit
                .encode(&self.config.limits)
                .map_err(|e| Attempt::Ended(e.to_string()))?;
            send.write_all(&bytes)
                .await
                .map_err(|e| Attempt::Ended(e.to_string()))?;
        }
        let mut decoder = FrameDecoder::new(Channel::Control, &self.config.limits);
        let mut buf = vec![0u8; 16 * 1024];
        let outcome = loop {
            let n = match recv.read(&mut buf).await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    break Err(Attempt::Ended("the hub closed the registration".to_owned()));
                }
                Err(e) => break Err(Attempt::Ended(e.to_string())),
            };
            let mut input = buf.get(..n).unwrap_or_default();
            let message = match decoder.decode_next(&mut input) {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(e) => break Err(Attempt::Ended(e.to_string())),
            };
            let _ = session.handle_message(Instant::now(), message);
            match session.poll_event() {
                Some(AgentEvent::Registered(registered)) => {
                    let identity = Identity {
                        cluster: self.config.cluster.clone(),
                        ca_fingerprint: self.config.ca_fingerprint.clone(),
                        key_pkcs8: key.pkcs8,
                        certificate: registered.certificate,
                        key_set: registered.key_set,
                    };
                    self.keeper.save(&identity).await.map_err(Error::from)?;
                    break Ok(identity);
                }
                Some(AgentEvent::Goodbye(goodbye)) => {
                    break Err(Attempt::Fatal(Error::RegistrationRefused(goodbye.message)));
                }
                _ => {}
            }
        };
        connection.close(0u32.into(), b"registered");
        outcome
    }
}
