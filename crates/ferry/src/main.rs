use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match ferry::config::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("ferry: {}", e.message);
            }
            return ExitCode::from(e.code);
        }
    };
    ferry::init_tracing(&cli);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(ferry::run(cli));
    drop(rt);
    // Export the spans still buffered.
    ferry_telemetry::trace::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
