//! Environmental regulation arithmetic for the IOC, pure and I/O-free.
//!
//! - [`aqi`]: VN_AQI per Decision 1459/QĐ-TCMT: breakpoints, NowCast, hourly and daily
//!   AQI, bands.
//! - [`qcvn`]: limits as versioned data: QCVN 05:2023/BTNMT (ambient air) and
//!   QCVN 40:2011/BTNMT (industrial wastewater), and exceedance.
//! - [`csv`]: the `ioc aqi` file format: parse hourly means per station, produce the hourly
//!   and daily reports (which serialise to JSON).
//! - [`forecast`]: PM2.5 for the next hours from a station's hourly means, with a band and the
//!   forecast VN_AQI, and its rolling-origin backtest (`ioc forecast`).
//!
//! Concentrations are µg/m³ throughout; metric names are the canonical catalogue's.

pub mod aqi;
pub mod csv;
pub mod forecast;
pub mod qcvn;
