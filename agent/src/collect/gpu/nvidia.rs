//! NVIDIA GPUs through NVML (`libnvidia-ml.so.1`, loaded at run time by nvml-wrapper,
//! so the agent runs on hosts without the driver).
//!
//! The mapping from a device's NVML fields to a [`GpuReading`] goes through the small
//! [`NvmlDevice`] trait so it is tested with a fake device; only [`NvmlBackend`] talks
//! to the library, on the worker thread (see `worker.rs`).
//!
//! Units (NVML API reference, nvmlDeviceGetUtilizationRates, nvmlDeviceGetMemoryInfo,
//! nvmlDeviceGetTemperature): utilisation is a percentage over the driver's last
//! sample period, memory is in bytes, temperature in whole degrees Celsius.
#![cfg_attr(
    not(feature = "nvidia"),
    allow(dead_code, reason = "without the nvidia feature only the tests use the mapping")
)]

use std::sync::atomic::Ordering;

use super::{Counters, GpuReading};

/// Why one field of a device could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldError {
    /// The device does not have it (utilisation on some boards, temperature under MIG):
    /// a plain `None`, not a failure.
    NotSupported,
    Failed(String),
}

/// Memory of a device in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    pub used: u64,
    pub total: u64,
}

/// The NVML queries the agent makes of one device.
pub(crate) trait NvmlDevice {
    fn name(&self) -> Result<String, FieldError>;
    fn utilization_pct(&self) -> Result<u32, FieldError>;
    fn memory(&self) -> Result<Memory, FieldError>;
    fn temperature_c(&self) -> Result<u32, FieldError>;
}

/// One field's value; a failure other than "not supported" is logged and counted.
fn field<T>(index: u32, what: &'static str, result: Result<T, FieldError>, counters: &Counters) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(FieldError::NotSupported) => None,
        Err(FieldError::Failed(error)) => {
            counters.nvml_query_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(index, what, error, "NVML query failed");
            None
        }
    }
}

/// What the agent reports of NVML device number `index`.
pub(crate) fn reading_from_device(device: &dyn NvmlDevice, index: u32, counters: &Counters) -> GpuReading {
    let memory = field(index, "memory", device.memory(), counters);
    GpuReading {
        name: field(index, "name", device.name(), counters).unwrap_or_else(|| format!("NVIDIA GPU {index}")),
        vendor: Some("NVIDIA"),
        utilization_pct: field(index, "utilization", device.utilization_pct(), counters),
        mem_used_bytes: memory.map(|m| m.used),
        mem_total_bytes: memory.map(|m| m.total),
        // Whole degrees: exact in f32.
        temp_c: field(index, "temperature", device.temperature_c(), counters).map(|t| t as f32),
    }
}

/// The NVML backend, or `None` when the agent is built without the `nvidia` feature.
pub(crate) fn backend(counters: std::sync::Arc<Counters>) -> Option<Box<dyn super::worker::GpuBackend>> {
    #[cfg(feature = "nvidia")]
    {
        Some(Box::new(real::NvmlBackend::new(counters)))
    }
    #[cfg(not(feature = "nvidia"))]
    {
        drop(counters);
        tracing::debug!("built without the nvidia feature; NVIDIA GPUs are not reported");
        None
    }
}

#[cfg(feature = "nvidia")]
mod real {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use nvml_wrapper::Nvml;
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::error::NvmlError;

    use super::{Counters, FieldError, GpuReading, Memory, NvmlDevice, reading_from_device};
    use crate::collect::gpu::worker::{GpuBackend, Unavailable};

    fn field_error(e: NvmlError) -> FieldError {
        match e {
            NvmlError::NotSupported => FieldError::NotSupported,
            other => FieldError::Failed(other.to_string()),
        }
    }

    impl NvmlDevice for nvml_wrapper::Device<'_> {
        fn name(&self) -> Result<String, FieldError> {
            nvml_wrapper::Device::name(self).map_err(field_error)
        }
        fn utilization_pct(&self) -> Result<u32, FieldError> {
            self.utilization_rates().map(|u| u.gpu).map_err(field_error)
        }
        fn memory(&self) -> Result<Memory, FieldError> {
            self.memory_info().map(|m| Memory { used: m.used, total: m.total }).map_err(field_error)
        }
        fn temperature_c(&self) -> Result<u32, FieldError> {
            self.temperature(TemperatureSensor::Gpu).map_err(field_error)
        }
    }

    /// NVML, loaded on the first read and dropped (shut down) when it stops working,
    /// so the next probe loads it afresh.
    pub(crate) struct NvmlBackend {
        nvml: Option<Nvml>,
        counters: Arc<Counters>,
    }

    impl NvmlBackend {
        pub(crate) fn new(counters: Arc<Counters>) -> Self {
            Self { nvml: None, counters }
        }

        fn load(&mut self) -> Result<&Nvml, Unavailable> {
            if self.nvml.is_none() {
                self.counters.nvml_load_attempts.fetch_add(1, Ordering::Relaxed);
                let nvml = Nvml::init().map_err(|e| {
                    self.counters.nvml_load_failures.fetch_add(1, Ordering::Relaxed);
                    Unavailable(format!("loading NVML: {e}"))
                })?;
                self.nvml = Some(nvml);
            }
            self.nvml.as_ref().ok_or_else(|| Unavailable("NVML not loaded".into()))
        }
    }

    /// Every device NVML lists; one that cannot be opened is logged, counted, skipped.
    fn read_devices(nvml: &Nvml, counters: &Counters) -> Result<Vec<GpuReading>, NvmlError> {
        let count = nvml.device_count()?;
        Ok((0..count)
            .filter_map(|index| match nvml.device_by_index(index) {
                Ok(device) => Some(reading_from_device(&device, index, counters)),
                Err(e) => {
                    counters.nvml_query_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(index, error = %e, "cannot open NVML device");
                    None
                }
            })
            .collect())
    }

    impl GpuBackend for NvmlBackend {
        fn read(&mut self) -> Result<Vec<GpuReading>, Unavailable> {
            let counters = self.counters.clone();
            let result = read_devices(self.load()?, &counters);
            match result {
                Ok(gpus) if !gpus.is_empty() => Ok(gpus),
                Ok(_) => {
                    self.nvml = None;
                    Err(Unavailable("NVML lists no usable device".into()))
                }
                Err(e) => {
                    counters.nvml_query_failures.fetch_add(1, Ordering::Relaxed);
                    self.nvml = None;
                    Err(Unavailable(format!("listing NVML devices: {e}")))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose every answer the test sets.
    struct FakeDevice {
        name: Result<String, FieldError>,
        utilization: Result<u32, FieldError>,
        memory: Result<Memory, FieldError>,
        temperature: Result<u32, FieldError>,
    }

    impl NvmlDevice for FakeDevice {
        fn name(&self) -> Result<String, FieldError> {
            self.name.clone()
        }
        fn utilization_pct(&self) -> Result<u32, FieldError> {
            self.utilization.clone()
        }
        fn memory(&self) -> Result<Memory, FieldError> {
            self.memory.clone()
        }
        fn temperature_c(&self) -> Result<u32, FieldError> {
            self.temperature.clone()
        }
    }

    #[test]
    fn maps_every_field() {
        let device = FakeDevice {
            name: Ok("NVIDIA GeForce RTX 4090".into()),
            utilization: Ok(73),
            memory: Ok(Memory { used: 3 << 30, total: 24 << 30 }),
            temperature: Ok(64),
        };
        let counters = Counters::default();
        assert_eq!(
            reading_from_device(&device, 0, &counters),
            GpuReading {
                name: "NVIDIA GeForce RTX 4090".into(),
                vendor: Some("NVIDIA"),
                utilization_pct: Some(73),
                mem_used_bytes: Some(3 << 30),
                mem_total_bytes: Some(24 << 30),
                temp_c: Some(64.0),
            }
        );
        assert_eq!(counters.nvml_query_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn missing_fields_are_none_and_only_real_failures_count() {
        let device = FakeDevice {
            name: Err(FieldError::Failed("Unknown Error".into())),
            utilization: Err(FieldError::NotSupported),
            memory: Err(FieldError::Failed("GPU is lost".into())),
            temperature: Err(FieldError::NotSupported),
        };
        let counters = Counters::default();
        let reading = reading_from_device(&device, 2, &counters);
        assert_eq!(reading.name, "NVIDIA GPU 2");
        assert_eq!(
            (reading.utilization_pct, reading.mem_used_bytes, reading.mem_total_bytes, reading.temp_c),
            (None, None, None, None)
        );
        assert_eq!(counters.nvml_query_failures.load(Ordering::Relaxed), 2);
    }
}
