//! A record type is defined once, with [`record!`]: its row struct, its columns (ClickHouse
//! and Arrow types), its key, time and Arrow codec all come from that one definition. Both
//! stores work over [`Record`] generically: ClickHouse's schema and SQL, the embedded store's
//! Parquet files, deduplication and queries.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use ioc_contract::Resolution;

use crate::HistoryFilter;

/// One column of a record's table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    /// The ClickHouse type; `None` for a value ClickHouse keeps in the table's name instead
    /// (an aggregate's resolution).
    pub clickhouse: Option<&'static str>,
    pub arrow: fn() -> DataType,
    pub nullable: bool,
    /// A column added after its table's first release: `Some(clause)` with what ClickHouse
    /// fills existing rows with (`DEFAULT …`, or empty), and older embedded files lacking it
    /// read as [`Value::absent`].
    pub added: Option<&'static str>,
}

/// A row type stored as a table (see [`record!`]).
pub trait Record:
    Clone + Send + Sync + clickhouse::RowOwned + clickhouse::RowRead + clickhouse::RowWrite
{
    /// The table's name (the embedded store's directory; the ClickHouse table of part 0).
    const TABLE: &'static str;
    const COLUMNS: &'static [Column];
    /// The columns that identify a record: a later version of the same key replaces it.
    const KEY: &'static [&'static str];
    /// The event time the table is partitioned and ranged by.
    const TIME: Option<&'static str>;
    /// Queries return the newest first.
    const NEWEST_FIRST: bool = false;
    /// Parts kept apart (an aggregate's resolutions): each its own ClickHouse table and its
    /// own embedded files, so a query of one never reads another.
    const PARTS: &'static [u8] = &[0];
    type Key: std::hash::Hash + Eq + Ord + Send;

    fn key(&self) -> Self::Key;
    fn version(&self) -> u64;
    /// The value of [`Record::TIME`] (0 for tables without one).
    fn time(&self) -> i64;
    /// A text column's value, `None` where the record has no such column.
    fn text(&self, column: &str) -> Option<&str>;
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;
    /// Rows of a stored batch; the error names a missing or mistyped column.
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, &'static str>;

    fn part(&self) -> u8 {
        0
    }
    /// Stamps a row read from a part's ClickHouse table with the part (the table, not a
    /// column, says which).
    fn set_part(&mut self, _part: u8) {}
    /// The part a query reads.
    fn filter_part(_filter: &HistoryFilter) -> u8 {
        0
    }
    fn clickhouse_table(_part: u8) -> &'static str {
        Self::TABLE
    }
    /// Fills in what a row from before an added column derives from the others.
    fn upgraded(self) -> Self {
        self
    }

    fn arrow_schema() -> SchemaRef {
        Arc::new(Schema::new(
            Self::COLUMNS
                .iter()
                .map(|c| Field::new(c.name, (c.arrow)(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// Whether the table has a text column `name` in ClickHouse (what a filter narrows by).
    fn has_text_column(name: &str) -> bool {
        Self::COLUMNS
            .iter()
            .any(|c| c.name == name && c.clickhouse == Some("String"))
    }
}

/// A column value's types and codec.
pub trait Value: Sized {
    const CLICKHOUSE: Option<&'static str>;
    const NULLABLE: bool = false;
    fn arrow() -> DataType;
    fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a;
    /// `None` when the array is not of this type.
    fn decode(array: &dyn Array) -> Option<Vec<Self>>;
    /// What a row from before the column existed reads as.
    fn absent() -> Self;
    fn text(&self) -> Option<&str> {
        None
    }
}

/// Decodes one column of a batch; an added column absent from an older file reads as absent.
pub fn decode<T: Value>(
    batch: &RecordBatch,
    column: &'static str,
    added: bool,
) -> Result<Vec<T>, &'static str> {
    match batch.column_by_name(column) {
        None if added => Ok((0..batch.num_rows()).map(|_| T::absent()).collect()),
        None => Err(column),
        Some(a) => T::decode(a.as_ref()).ok_or(column),
    }
}

impl Value for String {
    const CLICKHOUSE: Option<&'static str> = Some("String");
    fn arrow() -> DataType {
        DataType::Utf8
    }
    fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(values))
    }
    fn decode(array: &dyn Array) -> Option<Vec<Self>> {
        let a = array.as_any().downcast_ref::<StringArray>()?;
        Some((0..a.len()).map(|i| a.value(i).to_string()).collect())
    }
    fn absent() -> Self {
        String::new()
    }
    fn text(&self) -> Option<&str> {
        Some(self)
    }
}

/// Primitive columns, and their nullable forms.
macro_rules! primitive {
    ($($t:ty => $array:ty, $arrow:ident, $ch:literal, $absent:expr;)+) => {$(
        impl Value for $t {
            const CLICKHOUSE: Option<&'static str> = Some($ch);
            fn arrow() -> DataType {
                DataType::$arrow
            }
            fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(<$array>::from_iter_values(values.copied()))
            }
            fn decode(array: &dyn Array) -> Option<Vec<Self>> {
                Some(array.as_any().downcast_ref::<$array>()?.values().to_vec())
            }
            fn absent() -> Self {
                $absent
            }
        }
        impl Value for Option<$t> {
            const CLICKHOUSE: Option<&'static str> = Some(concat!("Nullable(", $ch, ")"));
            const NULLABLE: bool = true;
            fn arrow() -> DataType {
                DataType::$arrow
            }
            fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(<$array>::from_iter(values.copied()))
            }
            fn decode(array: &dyn Array) -> Option<Vec<Self>> {
                Some(array.as_any().downcast_ref::<$array>()?.iter().collect())
            }
            fn absent() -> Self {
                None
            }
        }
    )+};
}

primitive! {
    i64 => Int64Array, Int64, "Int64", 0;
    i32 => Int32Array, Int32, "Int32", 0;
    u64 => UInt64Array, UInt64, "UInt64", 0;
    u32 => UInt32Array, UInt32, "UInt32", 0;
    // NaN marks a value an older row lacks, for `Record::upgraded` to derive.
    f64 => Float64Array, Float64, "Float64", f64::NAN;
}

/// An aggregate's resolution: a column in the embedded store, the table's name in ClickHouse.
impl Value for Resolution {
    const CLICKHOUSE: Option<&'static str> = None;
    fn arrow() -> DataType {
        DataType::Utf8
    }
    fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(values.map(|r| r.as_str())))
    }
    fn decode(array: &dyn Array) -> Option<Vec<Self>> {
        let a = array.as_any().downcast_ref::<StringArray>()?;
        (0..a.len())
            .map(|i| Resolution::parse(a.value(i)))
            .collect()
    }
    /// Files from before resolutions held 1-minute windows.
    fn absent() -> Self {
        Resolution::Minute
    }
}

/// Defines a record type: the row struct (with the serde and ClickHouse derives both stores
/// use) and its [`Record`] implementation.
///
/// ```ignore
/// record! {
///     /// Doc of the row.
///     pub struct ReadingRow in "readings", key(device_id: String, ts: i64), time(ts) {
///         pub device_id: String,
///         pub ts: i64,
///         pub late: Option<f64> [added ""],   // added after the first release
///         pub version: u64,
///     }
///     impl { /* further `Record` items: PARTS, part(), … */ }
/// }
/// ```
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $table:literal,
            key($($key:ident: $kty:ty),+ $(,)?)
            $(, time($time:ident))? {
            $( $(#[$fmeta:meta])* pub $field:ident: $ty:ty $([added $ddl:literal])? ),+ $(,)?
        }
        $(impl { $($extra:tt)* })?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )+
        }

        impl $crate::record::Record for $name {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [$crate::record::Column] = &[$(
                $crate::record::Column {
                    name: stringify!($field),
                    clickhouse: <$ty as $crate::record::Value>::CLICKHOUSE,
                    arrow: <$ty as $crate::record::Value>::arrow,
                    nullable: <$ty as $crate::record::Value>::NULLABLE,
                    added: record!(@added $($ddl)?),
                },
            )+];
            const KEY: &'static [&'static str] = &[$(stringify!($key)),+];
            const TIME: Option<&'static str> = record!(@time $($time)?);
            type Key = ($($kty,)+);

            fn key(&self) -> Self::Key {
                ($(self.$key.clone(),)+)
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn time(&self) -> i64 {
                record!(@time_of self $($time)?)
            }
            fn text(&self, column: &str) -> Option<&str> {
                match column {
                    $(stringify!($field) => $crate::record::Value::text(&self.$field),)+
                    _ => None,
                }
            }
            fn to_batch(
                rows: &[Self],
            ) -> Result<arrow_array::RecordBatch, arrow_schema::ArrowError> {
                arrow_array::RecordBatch::try_new(
                    <Self as $crate::record::Record>::arrow_schema(),
                    vec![$(
                        <$ty as $crate::record::Value>::array(rows.iter().map(|r| &r.$field)),
                    )+],
                )
            }
            fn from_batch(
                batch: &arrow_array::RecordBatch,
            ) -> Result<Vec<Self>, &'static str> {
                $(
                    let mut $field = $crate::record::decode::<$ty>(
                        batch,
                        stringify!($field),
                        record!(@added $($ddl)?).is_some(),
                    )?
                    .into_iter();
                )+
                Ok((0..batch.num_rows())
                    .map(|_| $name {
                        $($field: $field.next().expect("a batch's columns have its length"),)+
                    })
                    .map(<Self as $crate::record::Record>::upgraded)
                    .collect())
            }
            $($($extra)*)?
        }
    };
    (@added) => { None::<&'static str> };
    (@added $ddl:literal) => { Some($ddl) };
    (@time) => { None };
    (@time $time:ident) => { Some(stringify!($time)) };
    (@time_of $self:ident) => { 0 };
    (@time_of $self:ident $time:ident) => { $self.$time };
}

/// Where a table's rows are kept in the embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeping {
    /// Parquet files of its own.
    Files,
    /// The manifest's checkpoint (the stream's offsets and watermarks).
    Checkpoint,
}

/// A table, as the stores create, open and compact it without knowing its row type.
#[derive(Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    pub key: &'static [&'static str],
    pub time: Option<&'static str>,
    pub keeping: Keeping,
    /// Each part's ClickHouse table.
    pub clickhouse_tables: fn() -> Vec<&'static str>,
    /// Merges embedded files of this table into one (compaction).
    pub(crate) merge: crate::embedded::MergeFn,
}

impl Table {
    pub(crate) fn of<R: Record>(keeping: Keeping) -> Table {
        Table {
            name: R::TABLE,
            columns: R::COLUMNS,
            key: R::KEY,
            time: R::TIME,
            keeping,
            clickhouse_tables: || R::PARTS.iter().map(|p| R::clickhouse_table(*p)).collect(),
            merge: crate::embedded::merge::<R>,
        }
    }

    pub fn clickhouse_key(&self) -> Vec<&'static str> {
        clickhouse_key(self.columns, self.key)
    }
}

/// The ClickHouse columns of a key, in order: its tables' sort key (a part is a table of its
/// own, so a key column ClickHouse does not keep is left out).
pub fn clickhouse_key(columns: &[Column], key: &[&'static str]) -> Vec<&'static str> {
    key.iter()
        .copied()
        .filter(|k| {
            columns
                .iter()
                .any(|c| c.name == *k && c.clickhouse.is_some())
        })
        .collect()
}
