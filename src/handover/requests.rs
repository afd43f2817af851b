//! The control socket's VM requests (`handover`, `handback`, `vifup`): served beside the
//! data path, not on its thread, since they change routes and start watches, and the last
//! pages of a migration through the tunnel cross that thread at the very moment of a
//! handover at the pause.

use std::sync::Arc;

use super::{Handover, OldHost, Routing};
use crate::config::{Config, Role};
use crate::cutover::index_of;
use crate::status::{Reply, Request};

/// What answers the VM requests of one instance.
#[derive(Clone)]
pub struct VmRequests {
    config: Arc<Config>,
    handover: Option<Handover>,
}

impl VmRequests {
    /// For the instance of `config`, with its handover (if it runs one).
    pub fn new(config: Arc<Config>, handover: Option<Handover>) -> Self {
        Self { config, handover }
    }

    /// Whether `request` is one of these (the others are the driver's).
    pub fn serves(request: &Request) -> bool {
        matches!(
            request,
            Request::Handover(_) | Request::HandBack(_) | Request::VifUp(_)
        )
    }

    /// Carries out `request` (it blocks on netlink): the reply, or `None` for a request
    /// that is not one of these.
    pub fn answer(&self, request: &Request) -> Option<Reply> {
        let done = match request {
            Request::Handover(vif) => self.old_host().and_then(|old| old.hand_over_at_pause(vif)),
            Request::HandBack(vif) => self.old_host().and_then(|old| old.hand_back(vif)),
            Request::VifUp(vif) => self.vif_up(vif),
            _ => return None,
        };
        Some(done.map_or_else(Reply::Error, |()| Reply::Ok(None)))
    }

    /// `vmtun vif-up VIF` asked of this instance (libvirt's `<script>`): sets `vif` up, its
    /// routes now or, if the handover says the VM runs on the other host until its guest's
    /// first frame here, then.
    fn vif_up(&self, vif: &str) -> Result<(), String> {
        let routing = match (&self.handover, self.config.vm(vif)) {
            (Some(handover), Some(_)) => handover.link(vif, index_of(vif)),
            _ => Routing::Now,
        };
        match routing {
            Routing::Now => crate::vif::up(&self.config, vif),
            Routing::AtFirstFrame => crate::vif::prepare(&self.config, vif),
        }
        .map_err(|e| format!("{e:#}"))
    }

    fn old_host(&self) -> Result<&OldHost, String> {
        let role = self.config.migration.as_ref().map(|m| m.role);
        match (&self.handover, role) {
            (Some(Handover::Old(old)), _) => Ok(old),
            (_, Some(Role::New)) => {
                Err("a handover is the old host's (role old): run it there".into())
            }
            (_, Some(Role::Old)) => Err("no [[vm]] in the config: no VM to hand over".into()),
            (_, None) => Err("no [migration] in the config: no VM to hand over".into()),
        }
    }
}
