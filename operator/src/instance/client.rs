//! The controller's side of the instance manager API.

use std::time::Duration;

use anyhow::{Context, bail};

use super::api::{FAILSAFE_PATH, RENEW_LEASE_HEADER, REQUESTS_PATH, STATUS_PATH};
use super::report::{FailsafeRequest, InstanceReport, OperationReport, Request};

#[derive(Clone, Debug)]
pub struct ManagerClient {
    http: reqwest::Client,
    token: String,
}

/// The manager's answer to a request.
#[derive(Debug)]
pub enum Submitted {
    Accepted(OperationReport),
    /// Another operation runs; try again later.
    Busy(String),
    /// The request does not apply to the instance as it is.
    Refused(String),
}

impl ManagerClient {
    /// A client sending `token`; each call says how long it may take (the controller's probe
    /// time-out, which users can change at any time). With `authority` (PEM), managers are
    /// reached over HTTPS and must present a certificate it signed (for the address asked,
    /// unless that is an IP address: see `tls::config::member_client`).
    pub fn new(token: String, authority: Option<&str>) -> anyhow::Result<Self> {
        crate::tls::config::install_default_provider();
        let mut builder = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30));
        builder = match authority {
            Some(ca) => {
                builder.tls_backend_preconfigured(crate::tls::config::member_client(ca)?).https_only(true)
            }
            None => builder.tls_backend_preconfigured(crate::tls::config::client_trusting_nothing()?),
        };
        let http = builder.build().context("building HTTP client")?;
        Ok(Self { http, token })
    }

    /// The manager's report; `renew` also renews a primary's lease (see `lease`).
    pub async fn status(&self, base: &str, timeout: Duration, renew: bool) -> anyhow::Result<InstanceReport> {
        let mut request =
            self.http.get(format!("{base}{STATUS_PATH}")).bearer_auth(&self.token).timeout(timeout);
        if renew {
            request = request.header(RENEW_LEASE_HEADER, "1");
        }
        let resp = request.send().await?;
        if !resp.status().is_success() {
            bail!("status request answered {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    pub async fn submit(
        &self,
        base: &str,
        request: &Request,
        timeout: Duration,
    ) -> anyhow::Result<Submitted> {
        let resp = self.post(base, REQUESTS_PATH, request, timeout).await?;
        let status = resp.status();
        match status.as_u16() {
            202 => Ok(Submitted::Accepted(resp.json().await?)),
            409 => Ok(Submitted::Busy(resp.text().await.unwrap_or_default())),
            422 => Ok(Submitted::Refused(resp.text().await.unwrap_or_default())),
            _ => bail!("request answered {status}: {}", resp.text().await.unwrap_or_default()),
        }
    }

    async fn post(
        &self,
        base: &str,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(body)
            .send()
            .await
    }

    /// Asks a peer's manager to hold this primary (failsafe); `Ok` with how long it holds it.
    pub async fn failsafe(
        &self,
        base: &str,
        request: &FailsafeRequest,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let resp = self.post(base, FAILSAFE_PATH, request, timeout).await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("{status}: {}", resp.text().await.unwrap_or_default());
        }
        let held: u64 = resp.json().await?;
        Ok(Duration::from_millis(held))
    }
}
