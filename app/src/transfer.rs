//! `memoire-server export` and `memoire-server import`: the JSON Lines of `ExportMemories` and
//! `ImportMemories` to and from a file (or stdout/stdin), straight from Postgres — no running
//! server, no API key: whoever holds the database URL holds the data already.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use memoire_config::Config;
use memoire_usecases::ExportScope;
use std::io::{BufRead, BufReader, BufWriter, Write};
use uuid::Uuid;

/// How often a long export or import reports its progress on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Counts records and reports them every [`PROGRESS_EVERY`].
struct Progress {
    what: &'static str,
    started: Instant,
    last: Instant,
    records: u64,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Progress {
            what,
            started: now,
            last: now,
            records: 0,
        }
    }

    fn one(&mut self) {
        self.records += 1;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            tracing::info!(
                records = self.records,
                per_second = self.rate(),
                "{}",
                self.what
            );
        }
    }

    fn rate(&self) -> u64 {
        (self.records as f64 / self.started.elapsed().as_secs_f64().max(1e-3)) as u64
    }
}

/// Writes the tenant's records (or one user's) to `output`, or stdout.
pub async fn export(
    config: &Config,
    tenant: Uuid,
    user: Option<String>,
    namespaces: Vec<String>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let store = crate::connect(config).await?;
    let mut records = store
        .export(ExportScope {
            tenant,
            user,
            namespaces,
        })
        .await?;
    let out: Box<dyn Write + Send> = match &output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let mut progress = Progress::new("exporting");
    while let Some(record) = records.recv().await {
        writeln!(out, "{}", record?).context("writing the export")?;
        progress.one();
    }
    out.flush().context("writing the export")?;
    tracing::info!(
        records = progress.records,
        per_second = progress.rate(),
        "export finished"
    );
    Ok(())
}

/// Imports the records of `input` (or stdin) into `tenant`, in one transaction.
pub async fn import(
    config: &Config,
    tenant: Uuid,
    input: Option<PathBuf>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let store = crate::connect(config).await?;
    let uc = crate::usecases(config, store).await?;
    let input: Box<dyn std::io::Read + Send> = match &input {
        Some(path) => Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    let mut importer = uc.importer(tenant).await?;
    let mut progress = Progress::new("importing");
    for (n, line) in BufReader::with_capacity(1 << 16, input).lines().enumerate() {
        let line = line.context("reading the input")?;
        importer.push(n as u64 + 1, &line).await?;
        progress.one();
    }
    let c = uc.finish_import(importer, dry_run).await?;
    tracing::info!(
        records = c.records,
        episodes = c.episodes,
        memories = c.memories,
        versions = c.versions,
        edges = c.edges,
        skipped = c.skipped,
        per_second = progress.rate(),
        dry_run,
        "import finished"
    );
    if c.to_embed > 0 && !dry_run {
        tracing::info!(
            rows = c.to_embed,
            "embedding what came without the configured model's vectors"
        );
        uc.reembed_tenant(tenant, true).await?;
    }
    Ok(())
}
