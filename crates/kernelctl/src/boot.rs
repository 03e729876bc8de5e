//! The configuration a command runs with: the library's own sources (environment, the file of
//! `KERNEL_CONFIG_FILE`), then `--config` and `--set` on top.

use std::path::Path;

use kernel_bootstrap::config::{CONFIG_FILE_ENV, env_name};
use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{Error, Result};

/// The configuration of the process environment with the command line's flags on top.
pub(crate) fn config(file: Option<&Path>, set: &[String]) -> Result<KernelConfig> {
    let mut overrides = Vec::new();
    if let Some(path) = file {
        overrides.push((CONFIG_FILE_ENV.to_owned(), path.display().to_string()));
    }
    let settings = KernelConfig::settings();
    for pair in set {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::config(
                "--set",
                format!("expected KEY=VALUE, got {pair:?}"),
            ));
        };
        let key = key.trim();
        if !settings.iter().any(|s| s.key == key) {
            return Err(Error::config(
                key,
                "no such configuration key; `kernelctl config` shows every key",
            )
            .with_context("flag", "--set"));
        }
        overrides.push((env_name(key), value.to_owned()));
    }
    KernelConfig::from_env_with(overrides)
}

/// A kernel on `config`, with the pipeline and health the library gives it.
pub(crate) async fn kernel(config: KernelConfig) -> Result<Kernel> {
    Kernel::boot(config).await
}

/// The configuration of a target store: its file alone (the environment configures the
/// source, so it must not leak into the target).
pub(crate) fn target_config(file: &Path) -> Result<KernelConfig> {
    KernelConfig::from_toml_file(file)
}
