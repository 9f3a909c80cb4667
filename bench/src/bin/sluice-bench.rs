//! `sluice-bench`: the benchmark harness's entry point (`bench/run` builds and execs it).
//! Logic in `bench::run`; this installs the stop signals, runs, and checks that
//! nothing the run made is left behind. `sluice-bench probe …` is the `policy-apply` probe the
//! harness runs inside a pod (`bench::policy::probe`).

use std::{process::ExitCode, sync::atomic::Ordering};

use bench::{
    policy::probe,
    run::{self, Config, USAGE},
    INTERRUPTED,
};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

extern "C" fn on_stop(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        return match probe::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice-bench probe: {}", e.chain());
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-bench: {}\n{USAGE}", e.chain());
            return ExitCode::from(2);
        }
    };
    let stop = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &stop) }.expect("install a signal handler");
    }
    // A panic (the fixture panics on failure) has released everything by unwinding when it
    // gets here; it still gets the leftover check below.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run::run(&cfg)));
    let left = run::leftovers();
    if !left.is_empty() {
        eprintln!("sluice-bench: namespaces left behind: {}", left.join(" "));
        return ExitCode::FAILURE;
    }
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("sluice-bench: {}", e.chain());
            if INTERRUPTED.load(Ordering::Relaxed) {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
