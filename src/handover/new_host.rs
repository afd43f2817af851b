//! The new host's handover at run time: a [`FirstFrame`] watch on each configured VM
//! interface while it is up, feeding the reporter thread's [`super::Announcer`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{Ended, FirstFrame, VmEvent};
use crate::switch_report::{ReportId, ReportSender};

/// Role new with `handover = "first-frame"`: watches the VM interfaces for their guests.
pub struct NewHost {
    reports: ReportSender,
    watches: Mutex<HashMap<String, FirstFrame>>,
}

impl NewHost {
    /// Reports through `reports` (the reporter must have an [`super::Announcer`]).
    pub fn new(reports: ReportSender) -> Self {
        Self {
            reports,
            watches: Mutex::new(HashMap::new()),
        }
    }

    /// `vif` is up with index `ifindex` (watch it for the guest's first frame), or gone.
    pub fn link(&self, vif: &str, ifindex: Option<u32>) {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(index), Some(watch)) = (ifindex, watches.get(vif))
            && watch.ifindex() == index
        {
            return;
        }
        let was_watched = watches.remove(vif).is_some();
        self.reports.vm(VmEvent::Link {
            vif: vif.to_owned(),
            ifindex,
        });
        let Some(index) = ifindex else {
            if was_watched {
                tracing::info!(vif, "handover: {vif} is gone");
            }
            return;
        };
        let reports = self.reports.clone();
        let name = vif.to_owned();
        let watch = FirstFrame::watch(vif, index, move |ended| match ended {
            Ended::Frame { ifindex, at } => reports.vm(VmEvent::GuestFrame {
                vif: name,
                ifindex,
                id: ReportId(rand::random()),
                at,
            }),
            Ended::Failed(e) => tracing::debug!("handover: no longer watching: {e}"),
        });
        match watch {
            Ok(watch) => {
                tracing::info!(
                    vif,
                    "handover: {vif} is up: watching it for the guest's first frame"
                );
                watches.insert(vif.to_owned(), watch);
            }
            Err(e) => tracing::warn!(
                "handover: cannot watch {vif} for its guest ({e}); the old host keeps routing \
                 the VM to its source until that goes"
            ),
        }
    }
}

impl Drop for NewHost {
    fn drop(&mut self) {
        let watches = std::mem::take(
            self.watches
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (_, watch) in watches {
            watch.stop();
        }
    }
}
