//! The result files of a run ([`write`]), and those of an earlier run read back so that a run
//! `--only` some scenarios adds to them instead of replacing them: its records replace the
//! earlier records of the scenarios it measured, the others are kept
//! ([`Results::merge_earlier`]). The JSON records hold every
//! run's value, so they merge exactly. The picture needs the latency histograms, which the
//! JSON does not hold: every run also writes them to `<stem>.dists.json`, with the scenarios
//! they cover, and a merge whose kept scenarios that file covers redraws the whole picture.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{
    hist::Histogram,
    report::{Dist, Record, Results},
    run::{Config, SCENARIOS},
    svg, Context as _, Error, Result,
};

/// The exact value of every number literal in a JSON text, by the bits of the value
/// serde_json reads for it: its parser (without the `float_roundtrip` feature, which the
/// workspace does not enable) can be one unit in the last place off, and kept records must
/// be written back as they were.
fn exact_numbers(text: &str) -> std::collections::HashMap<u64, f64> {
    let mut out = std::collections::HashMap::new();
    let (mut in_string, mut escaped) = (false, false);
    let mut token = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if c.is_ascii_digit() || "-+.eE".contains(c) {
            token.push(c);
            continue;
        }
        if !token.is_empty() {
            if let (Ok(approx), Ok(exact)) =
                (serde_json::from_str::<f64>(&token), token.parse::<f64>())
            {
                out.insert(approx.to_bits(), exact);
            }
            token.clear();
        }
        in_string = c == '"';
    }
    out
}

/// The records of a results JSON (`<stem>.json`), every value exactly as written.
pub fn records(text: &str) -> Result<Vec<Record>> {
    let v: Value = serde_json::from_str(text).context("parse the results")?;
    let exact = exact_numbers(text);
    let list = v
        .as_array()
        .ok_or_else(|| Error::msg("the results are not a list"))?;
    list.iter()
        .map(|r| {
            let text = |k: &str| {
                r[k].as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::msg(format!("a record without {k}: {r}")))
            };
            let systems = r["systems"]
                .as_object()
                .ok_or_else(|| Error::msg(format!("a record without systems: {r}")))?;
            let mut runs = BTreeMap::new();
            for (name, s) in systems {
                let values: Option<Vec<f64>> = s["runs"].as_array().map(|a| {
                    a.iter()
                        .filter_map(Value::as_f64)
                        .map(|x| exact.get(&x.to_bits()).copied().unwrap_or(x))
                        .collect()
                });
                match values {
                    Some(v) if !v.is_empty() => runs.insert(name.clone(), v),
                    _ => return Err(Error::msg(format!("{name} has no runs in {r}"))),
                };
            }
            Ok(Record {
                scenario: text("scenario")?,
                metric: text("metric")?,
                unit: text("unit")?,
                higher_is_better: r["higher_is_better"].as_bool().unwrap_or(false),
                runs,
            })
        })
        .collect()
}

/// `<stem>.dists.json`: the distributions and the scenarios they are complete for.
pub fn dists_json(dists: &[Dist], covers: &BTreeSet<String>) -> Value {
    let list: Vec<Value> = dists
        .iter()
        .map(|d| json!({"scenario": d.scenario, "title": d.title, "systems": d.systems}))
        .collect();
    json!({"covers": covers, "dists": list})
}

/// The distributions of a `<stem>.dists.json` and the scenarios it covers.
pub fn dists(v: &Value) -> Result<(Vec<Dist>, BTreeSet<String>)> {
    let covers = v["covers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let list = v["dists"]
        .as_array()
        .ok_or_else(|| Error::msg("no dists in the distributions file"))?;
    let dists = list
        .iter()
        .map(|d| {
            let systems: BTreeMap<String, Histogram> =
                serde_json::from_value(d["systems"].clone()).context("a distribution")?;
            Ok(Dist {
                scenario: d["scenario"].as_str().unwrap_or_default().to_string(),
                title: d["title"].as_str().unwrap_or_default().to_string(),
                systems,
            })
        })
        .collect::<Result<Vec<Dist>>>()?;
    Ok((dists, covers))
}

/// What [`Results::merge_earlier`] did.
pub struct Merged {
    /// Scenarios whose records came from the earlier results.
    pub kept: Vec<String>,
    /// Whether the distributions of every kept scenario were known (the picture is whole).
    pub picture_whole: bool,
    /// The scenarios the merged distributions are complete for.
    pub covers: BTreeSet<String>,
}

fn rank(s: &str) -> usize {
    SCENARIOS.iter().position(|x| *x == s).unwrap_or(usize::MAX)
}

impl Results {
    /// The scenarios this run recorded.
    pub fn scenarios(&self) -> BTreeSet<String> {
        self.records.iter().map(|r| r.scenario.clone()).collect()
    }

    /// Adds the earlier `records` (and `dists`, with the scenarios they cover, if known) of
    /// every scenario this run did not record.
    pub fn merge_earlier(
        &mut self,
        records: Vec<Record>,
        dists: Option<(Vec<Dist>, BTreeSet<String>)>,
    ) -> Merged {
        let measured = self.scenarios();
        let mut kept = BTreeSet::new();
        for r in records {
            if !measured.contains(&r.scenario) {
                kept.insert(r.scenario.clone());
                self.insert(r);
            }
        }
        let mut covers = measured.clone();
        let (earlier, earlier_covers) = dists.unwrap_or_default();
        let picture_whole = kept.iter().all(|s| earlier_covers.contains(s));
        for d in earlier {
            if kept.contains(&d.scenario) {
                self.dists.push(d);
            }
        }
        covers.extend(kept.iter().filter(|s| earlier_covers.contains(*s)).cloned());
        self.dists.sort_by_key(|d| rank(&d.scenario));
        let mut kept: Vec<String> = kept.into_iter().collect();
        kept.sort_by_key(|s| rank(s));
        Merged {
            kept,
            picture_whole,
            covers,
        }
    }
}

/// How a merged summary names itself and the earlier runs' summaries it carries.
const MERGED: &str = "merged (--only) into the earlier";
const EARLIER: &str = "\n\nearlier:\n";

/// The summaries of the earlier runs in a results Markdown (its `text` block, one run after
/// each `earlier:`), but those of partial runs whose scenarios were all measured again: their
/// figures are gone.
fn earlier_summaries(md: &str, measured: &BTreeSet<String>) -> Vec<String> {
    let Some(block) = md
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
    else {
        return Vec::new();
    };
    block
        .split(EARLIER)
        .map(str::trim_end)
        .filter(|run| {
            let partial = run
                .lines()
                .find_map(|l| {
                    l.split_once(" measured now ")
                        .filter(|_| l.starts_with(MERGED))
                })
                .map(|(_, rest)| rest.split(';').next().unwrap_or_default());
            match partial {
                Some(list) => !list.split_whitespace().all(|s| measured.contains(s)),
                None => true,
            }
        })
        .map(str::to_string)
        .collect()
}

/// Writes `<stem>.json`, `<stem>.svg`, `<stem>.md` and `<stem>.dists.json` (the histograms
/// behind the picture), each through a `.tmp` and a rename. A run `--only` some scenarios
/// first merges the earlier results in ([`super::saved`]): the JSON and the Markdown then hold
/// every scenario; the picture is redrawn whole if the earlier histograms are known, else it
/// goes to `<stem>.partial.svg` and `<stem>.svg` is left as it was.
pub fn write(cfg: &Config, res: &mut Results, summary: &str) -> Result<()> {
    let dir = &cfg.results_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = |ext: &str| dir.join(format!("{}.{ext}", cfg.stem));
    let mut summary = summary.to_string();
    let mut covers = res.scenarios();
    let mut svg_name = format!("{}.svg", cfg.stem);
    if !cfg.only.is_empty() {
        let read = |p: std::path::PathBuf| -> Result<Option<String>> {
            match std::fs::read_to_string(&p) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
            }
        };
        let earlier = match read(path("json"))? {
            Some(text) => records(&text).context("the earlier results")?,
            None => Vec::new(),
        };
        let dists = match read(path("dists.json"))? {
            Some(text) => {
                let v = serde_json::from_str(&text).context("parse the earlier distributions")?;
                Some(dists(&v).context("the earlier distributions")?)
            }
            None => None,
        };
        let measured_set = res.scenarios();
        let measured: Vec<String> = measured_set.iter().cloned().collect();
        let m = res.merge_earlier(earlier, dists);
        covers = m.covers;
        if !m.kept.is_empty() {
            let earlier_md = std::fs::read_to_string(path("md")).unwrap_or_default();
            summary = format!(
                "{summary}\n{MERGED} {}.json: measured now {}; kept from the earlier results \
                 {}",
                cfg.stem,
                measured.join(" "),
                m.kept.join(" ")
            );
            for run in earlier_summaries(&earlier_md, &measured_set) {
                summary.push_str(EARLIER);
                summary.push_str(&run);
            }
            if !m.picture_whole {
                svg_name = format!("{}.partial.svg", cfg.stem);
                eprintln!(
                    "sluice-bench: {} lacks the histograms of some kept scenarios: {}.svg is \
                     left as it was, this run's picture goes to {svg_name}",
                    path("dists.json").display(),
                    cfg.stem
                );
            }
        }
    }
    let json = serde_json::to_string_pretty(&res.json()).context("encode the results")? + "\n";
    let dists = dists_json(&res.dists, &covers);
    let dists = serde_json::to_string(&dists).context("encode the distributions")? + "\n";
    let title = format!(
        "Sluice vs its baselines: latency by percentile ({} mode, {} rounds merged)",
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds
    );
    let svg = svg::render(&title, &res.dists);
    let md = format!(
        "{}\n{}\n```text\n{summary}\n```\n",
        res.markdown(),
        res.targets()
            .iter()
            .map(|t| format!("- {t}\n"))
            .collect::<String>()
    );
    for (name, text) in [
        (format!("{}.json", cfg.stem), json),
        (svg_name, svg),
        (format!("{}.md", cfg.stem), md),
        (format!("{}.dists.json", cfg.stem), dists),
    ] {
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a merge keeps the earlier records of the scenarios not measured, replaces
    /// those measured (every run of them), in the scenario list's order, and that the JSON
    /// reads back as written.
    #[test]
    fn merge_replaces_measured_scenarios_and_keeps_the_rest() {
        let mut earlier = Results::default();
        earlier.add("pod-pod-rr-1b", "rate", "req/s", true, "sluice", 1.0);
        earlier.add("pod-pod-rr-1b", "rate", "req/s", true, "sluice", 3.0);
        earlier.add("policy-apply", "p99", "s", false, "sluice", 9.0);
        earlier.add("cni-add", "p50", "ms", false, "bridge", 5.0);
        let mut h = Histogram::default();
        h.record(1000);
        earlier.add_dist("pod-pod-rr-1b", "t", "sluice", &h);
        let covers = earlier.scenarios();
        let saved = dists_json(&earlier.dists, &covers);
        let json = earlier.json();

        let mut now = Results::default();
        now.add("policy-apply", "p99", "s", false, "sluice", 0.5);
        let m = now.merge_earlier(
            records(&json.to_string()).expect("records"),
            Some(dists(&saved).expect("d")),
        );
        assert_eq!(m.kept, ["pod-pod-rr-1b", "cni-add"]);
        assert!(m.picture_whole);
        let out = now.json();
        let order: Vec<&str> = out
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|r| r["scenario"].as_str())
            .collect();
        assert_eq!(order, ["pod-pod-rr-1b", "cni-add", "policy-apply"]);
        assert_eq!(out[0]["systems"]["sluice"]["runs"], json!([1.0, 3.0]));
        assert_eq!(out[2]["systems"]["sluice"]["runs"], json!([0.5]));
        assert_eq!(now.dists.len(), 1);
    }

    /// Test that values read back are exactly those written, where serde_json's own parser is
    /// one unit in the last place off.
    #[test]
    fn records_read_back_exactly() {
        let text = r#"[{"scenario": "s", "metric": "m", "unit": "u", "higher_is_better": true,
            "systems": {"sluice": {"runs": [26.908188972764606, 9.530982074094915, 1e-3]}}}]"#;
        let r = records(text).expect("records");
        assert_eq!(
            r[0].runs["sluice"],
            [26.908188972764606, 9.530982074094915, 0.001]
        );
    }

    /// Test that the earlier summaries kept are the full run's and those of partial runs with
    /// a scenario not measured again, flat, in order.
    #[test]
    fn earlier_summaries_drop_runs_measured_again() {
        let md = format!(
            "| table |\n```text\nrun 3\n{MERGED} latest.json: measured now a b; kept from \
             the earlier results c{EARLIER}run 2\n{MERGED} latest.json: measured now a; kept \
             c{EARLIER}run 1\n{MERGED} latest.json: measured now a d; kept c{EARLIER}full run\n\
             ```\n"
        );
        let measured = BTreeSet::from(["a".to_string(), "b".to_string()]);
        let kept = earlier_summaries(&md, &measured);
        let firsts: Vec<&str> = kept.iter().filter_map(|r| r.lines().next()).collect();
        assert_eq!(firsts, ["run 1", "full run"]);
    }

    /// Test that without the earlier distributions the picture is known not to be whole.
    #[test]
    fn merge_without_distributions_says_the_picture_is_partial() {
        let mut earlier = Results::default();
        earlier.add("pod-pod-rr-1b", "rate", "req/s", true, "sluice", 1.0);
        let mut now = Results::default();
        now.add("policy-apply", "p99", "s", false, "sluice", 0.5);
        let m = now.merge_earlier(records(&earlier.json().to_string()).expect("records"), None);
        assert!(!m.picture_whole);
        assert_eq!(m.covers, BTreeSet::from(["policy-apply".to_string()]));
    }
}
