//! The reconciler settings the reconciler tests share: one node, a minute's grace, the default
//! fallback timeout, everything else off. A test changes only the field it is about.

use std::time::Duration;

use pod_checkpointer::reconciler::Settings;

/// Settings for an agent on `node_name`.
pub fn settings(node_name: &str) -> Settings {
    Settings {
        node_name: node_name.to_owned(),
        me: None,
        grace: Duration::from_secs(60),
        namespaces: Vec::new(),
        fallback_timeout: Duration::from_secs(300),
        keep_active_on_uninstall: true,
    }
}
