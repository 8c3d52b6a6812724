//! The machine a figure was measured on.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    /// Cores available to this process.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// 1-minute load average when the scenario started (other builds share the cores).
    pub loadavg_1m_at_start: Option<f64>,
    pub os: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| cpu_model(&s))
            .unwrap_or_else(|| "unknown".to_string());
        let loadavg_1m_at_start = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        Machine {
            nproc,
            cpu_model,
            loadavg_1m_at_start,
            os: std::env::consts::OS.to_string(),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_model_name() {
        let s = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t: x\n";
        assert_eq!(super::cpu_model(s).as_deref(), Some("AMD EPYC"));
        assert_eq!(super::cpu_model("processor : 0\n"), None);
    }
}
