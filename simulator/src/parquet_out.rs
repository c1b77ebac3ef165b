//! Parquet output of network runs (feature `parquet`): `links.parquet` and `pairs.parquet`
//! with the columns of links.csv and pairs.csv, Snappy-compressed. A day of the EuroQCI
//! scenario at full resolution is 26 million rows: 1.9 GB of CSV, a small fraction of that in
//! Parquet, and typed columns for pandas, polars or DuckDB.
//!
//! Written with the `parquet` crate's column writers, without Arrow (whose crates are heavy to
//! build).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::network::{OutputError, RunResult};
use crate::physical::Phase;

/// Rows per row group: bounded memory whatever the run's size.
const ROW_GROUP: usize = 1 << 20;

/// Writes `links.parquet` (one row per link and bucket: t_s, link, key_bits, cumulative_bits,
/// qber (NaN when not reported), up_fraction, aborted_fraction, phase) and `pairs.parquet`
/// (t_s, pair, e2e_cumulative_bits, e2e_shared_cumulative_bits) into `dir`.
pub fn write(r: &RunResult, dir: &Path) -> Result<(), OutputError> {
    std::fs::create_dir_all(dir)?;
    let links = "message links {
        required int64 t_s;
        required binary link (UTF8);
        required int64 key_bits;
        required int64 cumulative_bits;
        required float qber;
        required float up_fraction;
        required float aborted_fraction;
        required binary phase (UTF8);
    }";
    // One buffer per distinct string, shared by every row that holds it (a clone is a
    // reference count), rather than a copy per row.
    let ids: Vec<ByteArray> = r
        .links
        .iter()
        .map(|l| ByteArray::from(l.id.as_str()))
        .collect();
    let phases = [Phase::Up, Phase::Down, Phase::Aborted].map(|p| ByteArray::from(p.name()));
    let phase = |p: Phase| phases[p as usize].clone();
    let rows = r
        .links
        .iter()
        .zip(&ids)
        .flat_map(|(l, id)| l.buckets.iter().map(move |b| (id, b)));
    write_table(&dir.join("links.parquet"), links, rows, |chunk, cols| {
        cols.i64(chunk.iter().map(|(_, b)| b.t_s as i64))?;
        cols.bytes(chunk.iter().map(|(id, _)| (*id).clone()))?;
        cols.i64(chunk.iter().map(|(_, b)| b.key_bits as i64))?;
        cols.i64(chunk.iter().map(|(_, b)| b.cumulative_bits as i64))?;
        cols.f32(chunk.iter().map(|(_, b)| b.qber))?;
        cols.f32(chunk.iter().map(|(_, b)| b.up_fraction))?;
        cols.f32(chunk.iter().map(|(_, b)| b.aborted_fraction))?;
        cols.bytes(chunk.iter().map(|(_, b)| phase(b.phase)))
    })?;
    let pairs = "message pairs {
        required int64 t_s;
        required binary pair (UTF8);
        required int64 e2e_cumulative_bits;
        required int64 e2e_shared_cumulative_bits;
    }";
    let names: Vec<ByteArray> = r
        .pairs
        .iter()
        .map(|p| ByteArray::from(format!("{}<->{}", p.a, p.b).as_str()))
        .collect();
    let rows = r.pairs.iter().zip(&names).flat_map(|(p, name)| {
        r.times
            .iter()
            .zip(&p.cumulative_bits)
            .zip(&p.shared_cumulative_bits)
            .map(move |((t, c), s)| (*t, name, *c, *s))
    });
    write_table(&dir.join("pairs.parquet"), pairs, rows, |chunk, cols| {
        cols.i64(chunk.iter().map(|r| r.0 as i64))?;
        cols.bytes(chunk.iter().map(|r| r.1.clone()))?;
        cols.i64(chunk.iter().map(|r| r.2 as i64))?;
        cols.i64(chunk.iter().map(|r| r.3 as i64))
    })
}

/// The columns of one row group, written in schema order.
struct Columns<'a, 'b> {
    rg: &'a mut parquet::file::writer::SerializedRowGroupWriter<'b, File>,
}

impl Columns<'_, '_> {
    fn next(&mut self) -> Result<parquet::file::writer::SerializedColumnWriter<'_>, OutputError> {
        self.rg
            .next_column()
            .map_err(pq)?
            .ok_or_else(|| OutputError::Plot("parquet: more columns than the schema".into()))
    }

    fn i64(&mut self, v: impl Iterator<Item = i64>) -> Result<(), OutputError> {
        let v: Vec<i64> = v.collect();
        let mut c = self.next()?;
        c.typed::<Int64Type>()
            .write_batch(&v, None, None)
            .map_err(pq)?;
        c.close().map_err(pq)
    }

    fn f32(&mut self, v: impl Iterator<Item = f32>) -> Result<(), OutputError> {
        let v: Vec<f32> = v.collect();
        let mut c = self.next()?;
        c.typed::<FloatType>()
            .write_batch(&v, None, None)
            .map_err(pq)?;
        c.close().map_err(pq)
    }

    fn bytes(&mut self, v: impl Iterator<Item = ByteArray>) -> Result<(), OutputError> {
        let v: Vec<ByteArray> = v.collect();
        let mut c = self.next()?;
        c.typed::<ByteArrayType>()
            .write_batch(&v, None, None)
            .map_err(pq)?;
        c.close().map_err(pq)
    }
}

fn write_table<T>(
    path: &Path,
    schema: &str,
    rows: impl Iterator<Item = T>,
    mut write_group: impl FnMut(&[T], &mut Columns<'_, '_>) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let schema = Arc::new(parse_message_type(schema).map_err(pq)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w = SerializedFileWriter::new(File::create(path)?, schema, props).map_err(pq)?;
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<T> = rows.by_ref().take(ROW_GROUP).collect();
        let mut rg = w.next_row_group().map_err(pq)?;
        write_group(&chunk, &mut Columns { rg: &mut rg })?;
        rg.close().map_err(pq)?;
    }
    w.close().map_err(pq)?;
    Ok(())
}

fn pq(e: parquet::errors::ParquetError) -> OutputError {
    OutputError::Parquet(e.to_string())
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;

    use crate::network::{RunOptions, run};
    use crate::scenario::Scenario;

    #[test]
    fn parquet_holds_the_csv_rows() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/metro-2node.toml");
        let mut sc = Scenario::load(&path).unwrap();
        sc.scenario.duration_s = 7200;
        let links = sc.build_links(&path, &|_| {}).unwrap();
        let r = run(
            &sc,
            &links,
            RunOptions {
                aggregate_s: 60,
                threads: 1,
            },
            &|_| {},
        );
        let dir = tempfile::tempdir().unwrap();
        super::write(&r, dir.path()).unwrap();
        r.write(dir.path()).unwrap();
        let reader =
            SerializedFileReader::try_from(dir.path().join("links.parquet").as_path()).unwrap();
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut csv = csv::Reader::from_path(dir.path().join("links.csv")).unwrap();
        let csv_rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), csv_rows.len());
        assert_eq!(rows.len(), 120);
        for (p, c) in rows.iter().zip(&csv_rows) {
            assert_eq!(p.get_long(0).unwrap().to_string(), c[0]);
            assert_eq!(p.get_string(1).unwrap(), &c[1]);
            assert_eq!(p.get_long(3).unwrap().to_string(), c[3]);
            assert_eq!(p.get_string(7).unwrap(), &c[7]);
        }
        let pairs =
            SerializedFileReader::try_from(dir.path().join("pairs.parquet").as_path()).unwrap();
        assert_eq!(pairs.metadata().file_metadata().num_rows(), 120);
    }
}
