//! The command line: every command, its flags, and the examples `--help` shows.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Configuration comes from the same places as the library's: the KERNEL_* variables (and
DATABASE_URL / REDIS_URL), the TOML file of --config or KERNEL_CONFIG_FILE, and --set on top.

Examples:
  kernelctl --set storage_mode=postgres migrate status
  kernelctl health --json
  kernelctl kv put users alice '{\"name\": \"Alice\"}' --if-absent
  kernelctl kv list users --prefix a --limit 50
  kernelctl events export --category order > orders.ndjson
  kernelctl -c target.toml events import --input orders.ndjson
  kernelctl events copy --to postgres.toml
  kernelctl completions bash > /etc/bash_completion.d/kernelctl

Exit status: 0 success; 1 failure (printed on stderr), an unhealthy backend, or a key not found;
2 usage error; 130 interrupted (Ctrl-C; the message says how to resume).";

/// The operator's command line of the kernel storage subsystem.
#[derive(Debug, Parser)]
#[command(name = "kernelctl", version, about, after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// A TOML configuration file with the library's keys (as KERNEL_CONFIG_FILE).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Sets one configuration key, over the file and the environment (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Schema migrations of the configured PostgreSQL or SQLite store.
    #[command(
        after_help = "Examples:\n  kernelctl migrate status\n  kernelctl migrate up\n  \
                            kernelctl migrate rollback 1\n  kernelctl migrate --dir db/migrations \
                            --space billing up"
    )]
    Migrate(MigrateArgs),

    /// Probes every backend; exit status 0 when all are healthy, 1 otherwise.
    #[command(after_help = "Examples:\n  kernelctl health\n  kernelctl health --json")]
    Health {
        /// Prints the report as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Documents: get, put, delete, list, query, count (JSON in and out).
    #[command(subcommand)]
    Kv(KvCommand),

    /// Namespaces: list, create, drop.
    #[command(subcommand)]
    Ns(NsCommand),

    /// Events: read, tail, export, import, copy (NDJSON, one event per line).
    #[command(subcommand)]
    Events(EventsCommand),

    /// Prints the effective configuration (secrets masked) as TOML-like JSON.
    Config,

    /// Prints a shell completion script.
    #[command(
        after_help = "Example:\n  kernelctl completions bash > ~/.local/share/bash-completion/completions/kernelctl"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// An application's folder of NNNN_name.up.sql / NNNN_name.down.sql files (PostgreSQL).
    #[arg(long, value_name = "PATH", requires = "space")]
    pub(crate) dir: Option<PathBuf>,

    /// The version space of that folder (lowercase letters, digits, _ and -; not `kernel`).
    #[arg(long, value_name = "NAME", requires = "dir")]
    pub(crate) space: Option<String>,

    #[command(subcommand)]
    pub(crate) action: MigrateAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MigrateAction {
    /// Applies every pending migration.
    Up,
    /// Lists the migrations and whether each is applied, as a table.
    Status,
    /// Reverts the last N applied migrations.
    Rollback {
        /// How many.
        #[arg(default_value_t = 1)]
        n: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KvCommand {
    /// Prints the entry at a key as JSON (exit status 1 when there is none).
    #[command(after_help = "Example:\n  kernelctl kv get users alice")]
    Get { namespace: String, key: String },

    /// Writes a JSON value (the argument, or stdin when it is `-` or absent).
    #[command(
        after_help = "Examples:\n  kernelctl kv put users alice '{\"age\": 30}'\n  \
                            kernelctl kv put users alice '{\"age\": 31}' --if-version 1\n  \
                            echo '[1, 2]' | kernelctl kv put lists a --ttl 10m\n  \
                            kernelctl kv put stock apples 6 --if-version 3 --operation-id order-42"
    )]
    Put {
        namespace: String,
        key: String,
        /// The JSON value; `-` or absent reads stdin.
        value: Option<String>,
        #[command(flatten)]
        write: PutFlags,
    },

    /// Removes a key; prints {"deleted": true|false}.
    #[command(after_help = "Example:\n  kernelctl kv delete users alice --if-version 2")]
    Delete {
        namespace: String,
        key: String,
        /// Only if the entry is at this version.
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
        /// Names the delete for safe repetition (see `kv put --operation-id`).
        #[arg(long, value_name = "ID")]
        operation_id: Option<String>,
    },

    /// Lists entries in key order, one JSON object per line; prints the next page's
    /// `--after` on stderr, or pages through everything with --all.
    #[command(
        after_help = "Examples:\n  kernelctl kv list users --prefix a --limit 50\n  \
                            kernelctl kv list users --after alice --limit 50\n  \
                            kernelctl kv list users --all --keys-only"
    )]
    List {
        namespace: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only keys matching this glob (`*`, `?`, `\` escapes).
        #[arg(long)]
        pattern: Option<String>,
        /// Starts after this key (the cursor of the previous page).
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Every page, not just one.
        #[arg(long)]
        all: bool,
        /// Prints keys only.
        #[arg(long)]
        keys_only: bool,
    },

    /// Queries with a filter (JSON), sorted, one entry per line.
    #[command(after_help = "Examples:\n  kernelctl kv query users --filter \
                            '{\"field\": {\"path\": \"age\", \"op\": \"gte\", \"value\": 18}}'\n  \
                            kernelctl kv query users --query '{\"sort\": [{\"path\": \"age\"}], \"limit\": 10}'")]
    Query {
        namespace: String,
        /// A filter tree as JSON.
        #[arg(long, conflicts_with = "query")]
        filter: Option<String>,
        /// A whole query as JSON (filter, sort, limit, offset).
        #[arg(long)]
        query: Option<String>,
    },

    /// Counts live entries (matching a filter).
    #[command(after_help = "Example:\n  kernelctl kv count users --filter \
                            '{\"field\": {\"path\": \"active\", \"op\": \"eq\", \"value\": true}}'")]
    Count {
        namespace: String,
        /// A filter tree as JSON.
        #[arg(long)]
        filter: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PutFlags {
    /// Create only: fails if the key is live.
    #[arg(long, conflicts_with = "if_version")]
    pub(crate) if_absent: bool,
    /// Compare-and-set: only if the entry is at this version.
    #[arg(long, value_name = "N")]
    pub(crate) if_version: Option<u64>,
    /// Time to live (`30s`, `10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) ttl: Option<Duration>,
    /// Metadata as a JSON object (replaces the current metadata).
    #[arg(long, value_name = "JSON")]
    pub(crate) metadata: Option<String>,
    /// Names the write so that running the command again applies it at most once and prints
    /// the first outcome (an operation id, kept by the backend for its operation window).
    #[arg(long, value_name = "ID")]
    pub(crate) operation_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NsCommand {
    /// Every namespace, one JSON object per line.
    List,
    /// Creates an empty namespace.
    #[command(
        after_help = "Example:\n  kernelctl ns create users --metadata '{\"owner\": \"crm\"}'"
    )]
    Create {
        namespace: String,
        /// Metadata as a JSON object.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
    },
    /// Drops a namespace (a non-empty one only with --recursive).
    Drop {
        namespace: String,
        /// Removes its entries too.
        #[arg(long)]
        recursive: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Prints a stream's events, one per line.
    #[command(after_help = "Examples:\n  kernelctl events read order-42\n  \
                            kernelctl events read order-42 --from 10 --limit 5 --backward")]
    Read {
        stream: String,
        /// First version (inclusive).
        #[arg(long, value_name = "VERSION")]
        from: Option<u64>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Newest first.
        #[arg(long)]
        backward: bool,
    },

    /// Prints events as they are appended, until interrupted.
    #[command(after_help = "Examples:\n  kernelctl events tail\n  \
                            kernelctl events tail --from 0 --category order --type OrderPlaced")]
    Tail {
        /// Starts after this global position (default: the current head, so only new events).
        #[arg(long, value_name = "POS")]
        from: Option<u64>,
        #[command(flatten)]
        filter: FilterFlags,
    },

    /// Writes events in global order as NDJSON (stdout, or --output).
    #[command(after_help = "Examples:\n  kernelctl events export > all.ndjson\n  \
                            kernelctl events export --from 1000 --to 2000 --category order --output part.ndjson")]
    Export {
        /// Starts after this global position.
        #[arg(long, value_name = "POS", default_value_t = 0)]
        from: u64,
        /// Ends at this global position (inclusive; default: the head when the export starts).
        #[arg(long, value_name = "POS")]
        to: Option<u64>,
        #[command(flatten)]
        filter: FilterFlags,
        /// Writes to this file instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },

    /// Appends the events of an NDJSON export, keeping ids, stream versions, payloads,
    /// metadata and recording times. Idempotent: importing twice adds nothing.
    #[command(
        after_help = "Examples:\n  kernelctl events import --input all.ndjson\n  \
                            kernelctl events import --skip-lines 52000 < all.ndjson"
    )]
    Import {
        /// Reads this file instead of stdin.
        #[arg(long, short = 'i', value_name = "FILE")]
        input: Option<PathBuf>,
        /// Skips this many lines first (to resume an interrupted import).
        #[arg(long, value_name = "N", default_value_t = 0)]
        skip_lines: u64,
        /// Lines parsed before each write; a malformed line stops the import before its batch.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        batch: usize,
        /// Appends in flight at once, each on another stream. Above 1 the import is faster on
        /// an export whose streams interleave, but the global positions of events appended
        /// together may come out in another order than the export's (versions, ids, times and
        /// everything else stay the same).
        #[arg(long, value_name = "N", default_value_t = 1)]
        parallel: usize,
    },

    /// Copies events from this configuration's store into another's.
    #[command(
        after_help = "Examples:\n  kernelctl events copy --to postgres.toml\n  \
                            kernelctl --set storage_mode=redis events copy --to target.toml --from 5000"
    )]
    Copy {
        /// The target's configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Starts after this global position of the source.
        #[arg(long, value_name = "POS", default_value_t = 0)]
        from: u64,
        #[command(flatten)]
        filter: FilterFlags,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub(crate) struct FilterFlags {
    /// Only this category (repeatable).
    #[arg(long = "category", value_name = "C")]
    pub(crate) categories: Vec<String>,
    /// Only this event type (repeatable).
    #[arg(long = "type", value_name = "T")]
    pub(crate) types: Vec<String>,
}
