//! Reloading the configuration (SIGHUP) without disturbing what did not change.
//!
//! [`plan`] compares the running [`RuntimeSpec`] with the new one (pure, unit-tested);
//! [`Runtime::reload`] applies the difference:
//!
//! - **Identities** (by id): an added one gets its session and driver; a removed one is stopped
//!   (its store rows stay until `twinbridge forget`); one whose credential or history setting
//!   changed gets a new session and driver. The bridges of a restarted identity keep running:
//!   its desired watch and wake-up survive the restart.
//! - **Buses** (by name) and **line devices** (by device id): added ones start, removed ones
//!   stop, and one whose settings or device list changed is restarted (its port closed and
//!   reopened). An unchanged one keeps its task and its open port.
//! - **Hub settings** (host, port, transport, CA file, proxy, timeouts, backoff, pacing): every
//!   session is restarted with the new settings. They concern every identity alike, and
//!   reconnecting is what the change asks for; the bridges are not touched.
//! - **Gateway id and store path** cannot change in a running agent (the store is open, the
//!   link health of every device names the gateway): the old values are kept, a warning says
//!   that the change needs a restart, and the rest is applied.
//!
//! A new spec that fails the checks `Runtime::start` makes (duplicate identities, an unusable
//! CA file or credential) is refused before anything is stopped: the old configuration keeps
//! running untouched.

use std::fmt;
use std::sync::Arc;

use super::runtime::{Runtime, RuntimeError, RuntimeSpec, check};
use crate::hub::{LinkSettings, Pacing};

/// Where a reload gets its new spec: re-reads the configuration, or `None` when it is invalid
/// (the source has logged why). Called on a blocking thread.
pub type SpecSource = Arc<dyn Fn() -> Option<RuntimeSpec> + Send + Sync>;

/// What happens to one kind of part (identities, buses, line devices), by key, in the order
/// of the spec they come from (removed ones in the old spec's order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New: started.
    pub added: Vec<String>,
    /// Gone: stopped.
    pub removed: Vec<String>,
    /// Changed: stopped, then started with the new settings.
    pub changed: Vec<String>,
    /// Unchanged: left running.
    pub kept: Vec<String>,
}

impl Changes {
    /// Nothing added, removed or changed.
    pub fn is_unchanged(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// What stops: the removed and the changed.
    pub fn stopping(&self) -> Vec<String> {
        self.removed.iter().chain(&self.changed).cloned().collect()
    }

    /// Whether `key` is started: added or changed.
    pub fn starts(&self, key: &str) -> bool {
        self.added.iter().chain(&self.changed).any(|k| k == key)
    }

    fn compare<T>(
        old: &[&T],
        new: &[&T],
        key: impl Fn(&T) -> &str,
        same: impl Fn(&T, &T) -> bool,
    ) -> Self {
        let mut changes = Self::default();
        for n in new {
            let k = key(n).to_owned();
            match old.iter().find(|o| key(o) == k) {
                None => changes.added.push(k),
                Some(o) if same(o, n) => changes.kept.push(k),
                Some(_) => changes.changed.push(k),
            }
        }
        for o in old {
            if !new.iter().any(|n| key(n) == key(o)) {
                changes.removed.push(key(o).to_owned());
            }
        }
        changes
    }
}

/// What a reload does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Identities (gateway and devices): sessions and drivers.
    pub identities: Changes,
    /// Bus bridges, by bus name.
    pub buses: Changes,
    /// Line-device bridges, by device id.
    pub lines: Changes,
    /// The hub settings changed: every session restarts with the new ones (every kept
    /// identity is then in `identities.changed`).
    pub relink: bool,
    /// Changes that only a restart applies (the old values stay in effect), as log lines.
    pub needs_restart: Vec<String>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.identities.is_unchanged() && self.buses.is_unchanged() && self.lines.is_unchanged()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing changed");
        }
        let mut first = true;
        for (what, changes) in [
            ("devices", &self.identities),
            ("buses", &self.buses),
            ("line devices", &self.lines),
        ] {
            for (how, keys) in [
                ("added", &changes.added),
                ("removed", &changes.removed),
                ("restarted", &changes.changed),
            ] {
                if keys.is_empty() {
                    continue;
                }
                if !first {
                    f.write_str("; ")?;
                }
                first = false;
                write!(f, "{what} {how}: {}", keys.join(", "))?;
            }
        }
        if self.relink {
            f.write_str(" (hub settings changed: every session reconnects)")?;
        }
        Ok(())
    }
}

/// Compares the running spec with `new`. Returns the plan and the spec to run: `new`, except
/// for what cannot change while running (gateway id, store, and the agent's own constants),
/// which keeps its old value and is listed in [`Plan::needs_restart`].
pub fn plan(old: &RuntimeSpec, mut new: RuntimeSpec) -> (Plan, RuntimeSpec) {
    let mut needs_restart = Vec::new();
    if new.gateway.id != old.gateway.id {
        needs_restart.push(format!(
            "the gateway id changed from {:?} to {:?}: that needs a restart; still running as {:?}",
            old.gateway.id, new.gateway.id, old.gateway.id
        ));
        new.gateway = old.gateway.clone();
    }
    if new.store_path != old.store_path {
        needs_restart.push(format!(
            "the store moved from {} to {}: that needs a restart; still using {}",
            old.store_path.display(),
            new.store_path.display(),
            old.store_path.display()
        ));
        new.store_path.clone_from(&old.store_path);
    }
    new.store_options = old.store_options.clone();
    new.summary_every = old.summary_every;
    new.agent_version.clone_from(&old.agent_version);

    let relink = !same_link(&old.link, &new.link)
        || !same_pacing(&old.pacing, &new.pacing)
        || old.retry != new.retry;
    let old_ids: Vec<_> = old.identities().collect();
    let new_ids: Vec<_> = new.identities().collect();
    let mut identities = Changes::compare(&old_ids, &new_ids, |i| &i.id, |a, b| a == b);
    if relink {
        // In the new spec's order, as `compare` gives them.
        let order: Vec<String> = new.identities().map(|i| i.id.clone()).collect();
        identities.changed.append(&mut identities.kept);
        identities
            .changed
            .sort_by_key(|id| order.iter().position(|o| o == id));
    }
    let buses = Changes::compare(
        &old.buses.iter().collect::<Vec<_>>(),
        &new.buses.iter().collect::<Vec<_>>(),
        |b| &b.config.name,
        |a, b| a == b,
    );
    let lines = Changes::compare(
        &old.lines.iter().collect::<Vec<_>>(),
        &new.lines.iter().collect::<Vec<_>>(),
        |l| &l.device,
        |a, b| a == b,
    );
    let plan = Plan {
        identities,
        buses,
        lines,
        relink,
        needs_restart,
    };
    (plan, new)
}

/// Every setting the sessions use (the wall clock is the process's own, never compared).
fn same_link(a: &LinkSettings, b: &LinkSettings) -> bool {
    a.host == b.host
        && a.port == b.port
        && a.transport == b.transport
        && a.ca_file == b.ca_file
        && a.proxy == b.proxy
        && a.token_lifetime == b.token_lifetime
        && a.keep_alive == b.keep_alive
        && a.request_timeout == b.request_timeout
        && a.backoff == b.backoff
        && a.max_packet_size == b.max_packet_size
}

fn same_pacing(a: &Pacing, b: &Pacing) -> bool {
    a.connects.same_settings(&b.connects)
        && a.gets.same_settings(&b.gets)
        && a.updates.same_settings(&b.updates)
}

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new spec was refused before anything changed: the old one keeps running.
    #[error("refused: {0}")]
    Refused(RuntimeError),
    /// Applying it failed half-way (the store failed): the agent cannot go on.
    #[error(transparent)]
    Failed(RuntimeError),
}

impl Runtime {
    /// Applies `new` to the running agent (see the [module docs](self)): returns what was
    /// done. On [`ReloadError::Refused`] nothing was touched.
    pub async fn reload(&mut self, new: RuntimeSpec) -> Result<Plan, ReloadError> {
        let (plan, new) = plan(&self.spec, new);
        let link = check(&new).map_err(ReloadError::Refused)?;
        for warning in &plan.needs_restart {
            tracing::warn!("{warning}");
        }
        if plan.relink {
            self.link = link;
        }
        // Bridges first: they use the identities that may go away below.
        self.stop_bridges(&plan.buses.stopping(), &plan.lines.stopping())
            .await;
        self.stop_identities(&plan.identities.removed, true)
            .await
            .map_err(|e| ReloadError::Failed(e.into()))?;
        // The old session of a changed identity ends before its new one connects (the hub
        // would kick one of two connections with the same id off).
        self.stop_identities(&plan.identities.changed, false)
            .await
            .map_err(|e| ReloadError::Failed(e.into()))?;
        self.spec = new;
        let starting: Vec<_> = self
            .spec
            .identities()
            .filter(|i| plan.identities.starts(&i.id))
            .cloned()
            .collect();
        for identity in starting {
            self.start_identity(identity)
                .await
                .map_err(ReloadError::Failed)?;
        }
        self.set_order(&self.spec);
        let buses: Vec<_> = self
            .spec
            .buses
            .iter()
            .filter(|b| plan.buses.starts(&b.config.name))
            .cloned()
            .collect();
        for bus in buses {
            self.start_bus(bus);
        }
        let lines: Vec<_> = self
            .spec
            .lines
            .iter()
            .filter(|l| plan.lines.starts(&l.device))
            .cloned()
            .collect();
        for line in lines {
            self.start_line(line);
        }
        self.identities_changed();
        Ok(plan)
    }
}

/// Handles one SIGHUP: tells systemd `RELOADING=1` (with `MONOTONIC_USEC`), re-reads the
/// configuration through `source` and applies it, then `READY=1` whatever the outcome. An
/// invalid configuration leaves the running one untouched. `Err` only when applying failed
/// and the agent cannot go on.
pub(super) async fn on_hangup(
    runtime: &mut Runtime,
    source: Option<&SpecSource>,
) -> Result<(), RuntimeError> {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => super::notify(&[sd_notify::NotifyState::Reloading, now]),
        // Without the timestamp systemd ≥ 253 would fail the reload; say RELOADING anyway.
        Err(e) => {
            tracing::debug!(error = %e, "reading CLOCK_MONOTONIC failed");
            super::notify(&[sd_notify::NotifyState::Reloading]);
        }
    }
    let outcome = reload_from(runtime, source).await;
    super::notify(&[sd_notify::NotifyState::Ready]);
    outcome
}

async fn reload_from(
    runtime: &mut Runtime,
    source: Option<&SpecSource>,
) -> Result<(), RuntimeError> {
    let Some(source) = source.cloned() else {
        tracing::warn!("SIGHUP: this agent has no configuration file to reload");
        return Ok(());
    };
    tracing::info!("SIGHUP: reloading the configuration");
    let spec = match tokio::task::spawn_blocking(move || source()).await {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            tracing::error!("configuration not reloaded: still running the previous one");
            return Ok(());
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the configuration failed; still running the previous one");
            return Ok(());
        }
    };
    match runtime.reload(spec).await {
        Ok(plan) => {
            tracing::info!("configuration reloaded: {plan}");
            Ok(())
        }
        Err(ReloadError::Refused(e)) => {
            tracing::error!(
                error = %e,
                "configuration not reloaded: still running the previous one"
            );
            Ok(())
        }
        Err(ReloadError::Failed(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use device_protocols::backoff::BackoffConfig;
    use device_protocols::bus::{BusConfig, Transport};
    use device_protocols::line::{LineDeviceConfig, LineSettings};
    use device_protocols::serial::SerialSettings;

    use super::*;
    use crate::bridge::{BusSpec, DeviceMap, LineSpec};
    use crate::hub::{Credential, RateLimiter, Secret};
    use crate::service::IdentitySpec;
    use crate::store::StoreOptions;

    fn identity(id: &str) -> IdentitySpec {
        IdentitySpec {
            id: id.to_owned(),
            credential: Credential::SymmetricKey(Secret::new(format!("key-of-{id}"))),
            history: None,
        }
    }

    fn bus(name: &str, devices: &[(&str, u8)]) -> BusSpec {
        BusSpec {
            config: BusConfig::new(
                name,
                Transport::Serial(SerialSettings::new(format!("/dev/serial/by-id/{name}"))),
            ),
            devices: devices
                .iter()
                .map(|(device, unit)| DeviceMap {
                    device: (*device).to_owned(),
                    unit: *unit,
                    poll: Duration::from_secs(1),
                    points: Vec::new(),
                })
                .collect(),
        }
    }

    fn line(device: &str) -> LineSpec {
        LineSpec::new(
            device,
            LineDeviceConfig::new(
                device,
                SerialSettings::new(format!("/dev/serial/by-id/{device}")),
                LineSettings::default(),
            ),
            None,
            Vec::new(),
        )
    }

    fn pacing() -> Pacing {
        Pacing {
            connects: RateLimiter::new(5.0, 5),
            gets: RateLimiter::new(10.0, 10),
            updates: RateLimiter::new(10.0, 10),
        }
    }

    /// gw; bus a: a1 (unit 1), a2 (2); bus b: b1 (1); line device w1.
    fn site() -> RuntimeSpec {
        let link = LinkSettings::new("hub.example");
        RuntimeSpec {
            store_path: PathBuf::from("/var/lib/twinbridge/twinbridge.db"),
            store_options: StoreOptions::default(),
            retry: link.backoff,
            link,
            pacing: pacing(),
            gateway: identity("gw"),
            devices: ["a1", "a2", "b1", "w1"].map(identity).to_vec(),
            buses: vec![bus("a", &[("a1", 1), ("a2", 2)]), bus("b", &[("b1", 1)])],
            lines: vec![line("w1")],
            summary_every: Duration::from_secs(5),
            agent_version: "1.0".into(),
        }
    }

    fn strings(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let (plan, spec) = plan(&site(), site());
        assert!(plan.is_empty(), "{plan:?}");
        assert!(!plan.relink && plan.needs_restart.is_empty());
        assert_eq!(
            plan.identities.kept,
            strings(&["gw", "a1", "a2", "b1", "w1"])
        );
        assert_eq!(plan.buses.kept, strings(&["a", "b"]));
        assert_eq!(plan.lines.kept, strings(&["w1"]));
        assert_eq!(spec.devices, site().devices);
        assert_eq!(plan.to_string(), "nothing changed");
    }

    #[test]
    fn a_device_added_to_one_bus_restarts_that_bus_only() {
        let mut new = site();
        new.devices.push(identity("b2"));
        new.buses[1].devices.extend(bus("b", &[("b2", 2)]).devices);
        let (plan, _) = plan(&site(), new);
        assert_eq!(plan.identities.added, strings(&["b2"]));
        assert!(plan.identities.removed.is_empty() && plan.identities.changed.is_empty());
        assert_eq!(plan.buses.changed, strings(&["b"]));
        assert_eq!(plan.buses.kept, strings(&["a"]), "bus a keeps running");
        assert!(plan.lines.is_unchanged());
        assert_eq!(plan.to_string(), "devices added: b2; buses restarted: b");
    }

    #[test]
    fn a_removed_device_stops_its_identity_and_restarts_its_bus() {
        let mut new = site();
        new.devices.retain(|d| d.id != "a2");
        new.buses[0].devices.retain(|d| d.device != "a2");
        let (plan, _) = plan(&site(), new);
        assert_eq!(plan.identities.removed, strings(&["a2"]));
        assert_eq!(plan.buses.changed, strings(&["a"]));
        assert_eq!(plan.buses.kept, strings(&["b"]));
        assert_eq!(plan.buses.stopping(), strings(&["a"]));
    }

    #[test]
    fn buses_and_line_devices_come_and_go_by_name() {
        let mut new = site();
        new.buses.remove(1);
        new.buses.push(bus("c", &[("b1", 4)]));
        new.devices.push(identity("w2"));
        new.lines = vec![line("w2")];
        new.devices.retain(|d| d.id != "w1");
        let (plan, _) = plan(&site(), new);
        assert_eq!(plan.buses.added, strings(&["c"]));
        assert_eq!(plan.buses.removed, strings(&["b"]));
        assert_eq!(plan.buses.kept, strings(&["a"]));
        assert_eq!(plan.lines.added, strings(&["w2"]));
        assert_eq!(plan.lines.removed, strings(&["w1"]));
        assert_eq!(plan.identities.added, strings(&["w2"]));
        assert_eq!(plan.identities.removed, strings(&["w1"]));
        assert_eq!(
            plan.identities.kept,
            strings(&["gw", "a1", "a2", "b1"]),
            "a device moved to another bus keeps its session"
        );
        assert!(plan.buses.starts("c") && !plan.buses.starts("a"));
    }

    #[test]
    fn bus_settings_restart_the_bus_and_line_settings_the_line_device() {
        let mut new = site();
        new.buses[0].config.timeout = Duration::from_secs(2);
        new.lines[0].silence = Duration::from_secs(5);
        let (plan, _) = plan(&site(), new);
        assert_eq!(plan.buses.changed, strings(&["a"]));
        assert_eq!(plan.lines.changed, strings(&["w1"]));
        assert!(plan.identities.is_unchanged(), "no session is disturbed");
    }

    #[test]
    fn a_new_credential_or_history_setting_restarts_that_identity_only() {
        let mut new = site();
        new.devices[0].credential = Credential::SymmetricKey(Secret::new("rotated"));
        new.devices[2].history = Some(crate::store::HistoryLimits {
            max_bytes: 1024,
            max_age: Duration::from_mins(1),
        });
        let (plan, _) = plan(&site(), new);
        assert_eq!(plan.identities.changed, strings(&["a1", "b1"]));
        assert!(plan.buses.is_unchanged(), "the bridges keep running");
        assert!(!plan.relink);
    }

    #[test]
    fn new_hub_settings_restart_every_session_and_no_bridge() {
        for change in [
            (|s: &mut RuntimeSpec| s.link.host = "other.example".into()) as fn(&mut RuntimeSpec),
            |s| s.link.ca_file = Some("/etc/twinbridge/ca.pem".into()),
            |s| s.link.request_timeout = Duration::from_secs(3),
            |s| s.pacing.updates = RateLimiter::new(2.0, 2),
            |s| s.retry = BackoffConfig::new(Duration::from_millis(10), Duration::from_secs(1)),
        ] {
            let mut new = site();
            change(&mut new);
            new.devices.push(identity("z9"));
            let (plan, _) = plan(&site(), new);
            assert!(plan.relink, "{plan:?}");
            assert_eq!(
                plan.identities.changed,
                strings(&["gw", "a1", "a2", "b1", "w1"]),
                "every kept session, in configuration order"
            );
            assert_eq!(plan.identities.added, strings(&["z9"]));
            assert!(plan.identities.kept.is_empty());
            assert!(plan.buses.is_unchanged() && plan.lines.is_unchanged());
        }
    }

    #[test]
    fn pacing_made_the_same_way_is_the_same() {
        let mut new = site();
        new.pacing = pacing();
        assert!(!plan(&site(), new).0.relink);
    }

    #[test]
    fn gateway_id_and_store_path_need_a_restart_and_keep_their_old_values() {
        let mut new = site();
        new.gateway = identity("gw-renamed");
        new.store_path = PathBuf::from("/srv/tb.db");
        new.devices.push(identity("n1"));
        let (plan, spec) = plan(&site(), new);
        assert_eq!(plan.needs_restart.len(), 2, "{:?}", plan.needs_restart);
        assert!(
            plan.needs_restart[0].contains("gw-renamed")
                && plan.needs_restart[0].contains("restart")
        );
        assert!(plan.needs_restart[1].contains("/srv/tb.db"));
        assert_eq!(spec.gateway.id, "gw", "still running as the old gateway");
        assert_eq!(spec.store_path, site().store_path);
        assert_eq!(
            plan.identities.added,
            strings(&["n1"]),
            "the rest is applied"
        );
        assert!(
            plan.identities.removed.is_empty(),
            "the gateway is not stopped"
        );
    }
}
