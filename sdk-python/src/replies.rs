//! Replies as Python dicts straight from the wire: what protobuf's
//! `json_format.MessageToDict(message, preserving_proto_field_name=True,
//! always_print_fields_with_no_presence=True)` returns for the decoded message — the same keys
//! in the same order, the same values — without building a Python message and walking it in
//! Python (2–3× the CPU of the rest of a `recall()` call on a 10-item reply).
//!
//! The proto3 JSON mapping, as that function applies it: field names as in the .proto; enums by
//! name (an unknown number as the number); 64-bit integers as decimal strings; `float`s as the
//! shortest decimal of at least 6 significant digits that reads back as the same `float`;
//! bytes in base64; `Timestamp` and `Duration` as RFC 3339 / `"1.5s"` strings; non-finite
//! numbers as `"NaN"` / `"Infinity"` / `"-Infinity"`. Fields set on the wire come first, by
//! field number (as `ListFields()` orders them), then every unset field without presence at its
//! default, in declaration order; unset fields with presence are left out. Unknown fields (and
//! fields of an unexpected wire type) are skipped; a message field that occurs twice is merged,
//! as protobuf merges it; setting a member of a oneof clears the others. Maps and groups — none
//! in `memoire.v1` — are refused when the descriptors are read, so that adding one fails every
//! decode (and the tests) loudly. `tests/python/test_replies.py` checks every reply type against
//! `MessageToDict` itself.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use pyo3::IntoPyObjectExt as _;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// What a field holds, as the mapping converts it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Double,
    Float,
    Int32,
    Sint32,
    Sfixed32,
    Uint32,
    Fixed32,
    Int64,
    Sint64,
    Sfixed64,
    Uint64,
    Fixed64,
    Bool,
    String,
    Bytes,
    /// An index into [`Plans::enums`].
    Enum(usize),
    /// An index into [`Plans::messages`].
    Message(usize),
    Timestamp,
    Duration,
}

#[derive(Debug)]
struct Field {
    name: String,
    number: u32,
    kind: Kind,
    repeated: bool,
    /// Explicit presence: a message, a oneof member or a proto3 `optional` field. Left out of
    /// the dict when unset.
    presence: bool,
    /// The (real) oneof it belongs to: setting it clears the oneof's other members.
    oneof: Option<i32>,
}

#[derive(Debug, Default)]
struct Plan {
    /// In declaration order.
    fields: Vec<Field>,
    by_number: HashMap<u32, usize>,
    /// Indices into `fields`, by field number.
    numbered: Vec<usize>,
}

#[derive(Debug, Default)]
struct Plans {
    messages: Vec<Plan>,
    by_name: HashMap<String, usize>,
    /// Per enum: its values' names by number.
    enums: Vec<HashMap<i32, String>>,
}

/// The plans of every message of the descriptor set, keyed by full name (no leading dot).
fn plans() -> &'static Result<Plans, String> {
    static PLANS: OnceLock<Result<Plans, String>> = OnceLock::new();
    PLANS.get_or_init(|| {
        let set = FileDescriptorSet::decode(memoire_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("the descriptor set does not decode: {e}"))?;
        Plans::build(&set)
    })
}

impl Plans {
    fn build(set: &FileDescriptorSet) -> Result<Plans, String> {
        fn walk<'a>(
            prefix: &str,
            messages: &'a [DescriptorProto],
            out: &mut Vec<(String, &'a DescriptorProto)>,
        ) {
            for m in messages {
                let name = format!("{prefix}.{}", m.name());
                walk(&name, &m.nested_type, out);
                out.push((name, m));
            }
        }
        let mut messages = Vec::new();
        let mut enums: Vec<(String, &prost_types::EnumDescriptorProto)> = Vec::new();
        for file in &set.file {
            let package = match file.package() {
                "" => String::new(),
                p => format!(".{p}"),
            };
            walk(&package, &file.message_type, &mut messages);
            enums.extend(
                file.enum_type
                    .iter()
                    .map(|e| (format!("{package}.{}", e.name()), e)),
            );
        }
        for (name, m) in &messages {
            enums.extend(
                m.enum_type
                    .iter()
                    .map(|e| (format!("{name}.{}", e.name()), e)),
            );
        }
        let enum_index: HashMap<&str, usize> = enums
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let message_index: HashMap<&str, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut plans = Plans {
            enums: enums
                .iter()
                .map(|(_, e)| {
                    e.value
                        .iter()
                        .map(|v| (v.number(), v.name().to_owned()))
                        .collect()
                })
                .collect(),
            ..Plans::default()
        };
        for (name, m) in &messages {
            let mut plan = Plan::default();
            for f in &m.field {
                let type_name = f.type_name();
                let kind = match f.r#type() {
                    Type::Double => Kind::Double,
                    Type::Float => Kind::Float,
                    Type::Int32 => Kind::Int32,
                    Type::Sint32 => Kind::Sint32,
                    Type::Sfixed32 => Kind::Sfixed32,
                    Type::Uint32 => Kind::Uint32,
                    Type::Fixed32 => Kind::Fixed32,
                    Type::Int64 => Kind::Int64,
                    Type::Sint64 => Kind::Sint64,
                    Type::Sfixed64 => Kind::Sfixed64,
                    Type::Uint64 => Kind::Uint64,
                    Type::Fixed64 => Kind::Fixed64,
                    Type::Bool => Kind::Bool,
                    Type::String => Kind::String,
                    Type::Bytes => Kind::Bytes,
                    Type::Enum => Kind::Enum(
                        *enum_index
                            .get(type_name)
                            .ok_or_else(|| format!("{name}.{}: no enum {type_name}", f.name()))?,
                    ),
                    Type::Message => match type_name {
                        ".google.protobuf.Timestamp" => Kind::Timestamp,
                        ".google.protobuf.Duration" => Kind::Duration,
                        _ => {
                            let i = *message_index.get(type_name).ok_or_else(|| {
                                format!("{name}.{}: no message {type_name}", f.name())
                            })?;
                            if messages[i]
                                .1
                                .options
                                .as_ref()
                                .is_some_and(|o| o.map_entry())
                            {
                                return Err(format!("{name}.{}: maps are not decoded", f.name()));
                            }
                            Kind::Message(i)
                        }
                    },
                    Type::Group => {
                        return Err(format!("{name}.{}: groups are not decoded", f.name()));
                    }
                };
                let repeated = f.label() == Label::Repeated;
                let message = matches!(kind, Kind::Message(_) | Kind::Timestamp | Kind::Duration);
                plan.by_number.insert(f.number() as u32, plan.fields.len());
                plan.fields.push(Field {
                    name: f.name().to_owned(),
                    number: f.number() as u32,
                    kind,
                    repeated,
                    presence: !repeated && (message || f.oneof_index.is_some()),
                    // A proto3 `optional` field's oneof is synthetic: it has no other member.
                    oneof: f.oneof_index.filter(|_| !f.proto3_optional()),
                });
            }
            plan.numbered = (0..plan.fields.len()).collect();
            plan.numbered.sort_by_key(|&i| plan.fields[i].number);
            plans
                .by_name
                .insert(name[1..].to_owned(), plans.messages.len());
            plans.messages.push(plan);
        }
        Ok(plans)
    }
}

/// The reply `bytes`, an encoded `message` (its full name, e.g. `memoire.v1.RecallReply`), as
/// `MessageToDict` would render it (see the module's documentation).
#[pyfunction]
pub fn decode_reply<'py>(
    py: Python<'py>,
    message: &str,
    bytes: &[u8],
) -> PyResult<Bound<'py, PyDict>> {
    let plans = plans()
        .as_ref()
        .map_err(|e| PyValueError::new_err(e.clone()))?;
    let &index = plans
        .by_name
        .get(message)
        .ok_or_else(|| PyValueError::new_err(format!("no message named {message}")))?;
    Decoder { py, plans }.message(index, &[bytes])
}

/// A wire-format error, for Python.
fn malformed(what: &str) -> PyErr {
    PyValueError::new_err(format!("malformed reply: {what}"))
}

/// A cursor over one encoded message.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn varint(&mut self) -> PyResult<u64> {
        let mut out = 0u64;
        for shift in (0..70).step_by(7) {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or_else(|| malformed("a truncated varint"))?;
            self.0 = rest;
            out |= u64::from(b & 0x7f) << shift.min(63);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(malformed("a varint over ten bytes"))
    }

    fn take(&mut self, n: usize) -> PyResult<&'a [u8]> {
        if n > self.0.len() {
            return Err(malformed("a truncated field"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> PyResult<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn delimited(&mut self) -> PyResult<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| malformed("a length"))?;
        self.take(n)
    }

    /// Skips a field of `wire` type that this decoder does not know.
    fn skip(&mut self, wire: u64) -> PyResult<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.delimited().map(drop),
            5 => self.take(4).map(drop),
            _ => Err(malformed("an unsupported wire type")),
        }
    }
}

/// A scalar as read from the wire, before conversion.
#[derive(Debug, Clone, Copy)]
enum Raw {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
}

/// A field's value so far.
enum Value<'a> {
    Scalar(Raw),
    Text(&'a [u8]),
    /// Every occurrence of a message field: merged by decoding them in turn.
    Parts(Vec<&'a [u8]>),
    List(Vec<Item<'a>>),
}

enum Item<'a> {
    Scalar(Raw),
    Text(&'a [u8]),
    Message(&'a [u8]),
}

struct Decoder<'py> {
    py: Python<'py>,
    plans: &'py Plans,
}

impl<'py> Decoder<'py> {
    /// The message `index`, merged from `parts` in order.
    fn message(&self, index: usize, parts: &[&[u8]]) -> PyResult<Bound<'py, PyDict>> {
        let plan = &self.plans.messages[index];
        let mut values: Vec<Option<Value<'_>>> = plan.fields.iter().map(|_| None).collect();
        for part in parts {
            let mut wire = Wire(part);
            while !wire.0.is_empty() {
                let key = wire.varint()?;
                let (number, wire_type) = (key >> 3, key & 7);
                let Some(&i) = u32::try_from(number)
                    .ok()
                    .and_then(|n| plan.by_number.get(&n))
                else {
                    wire.skip(wire_type)?;
                    continue;
                };
                let field = &plan.fields[i];
                if let Some(oneof) = field.oneof {
                    for (j, other) in plan.fields.iter().enumerate() {
                        if j != i && other.oneof == Some(oneof) {
                            values[j] = None;
                        }
                    }
                }
                let slot = &mut values[i];
                match (field.kind, wire_type) {
                    (Kind::String | Kind::Bytes, 2) => {
                        let text = wire.delimited()?;
                        if field.repeated {
                            list(slot).push(Item::Text(text));
                        } else {
                            *slot = Some(Value::Text(text));
                        }
                    }
                    (Kind::Message(_) | Kind::Timestamp | Kind::Duration, 2) => {
                        let bytes = wire.delimited()?;
                        if field.repeated {
                            list(slot).push(Item::Message(bytes));
                        } else {
                            match slot {
                                Some(Value::Parts(parts)) => parts.push(bytes),
                                _ => *slot = Some(Value::Parts(vec![bytes])),
                            }
                        }
                    }
                    (kind, 2) if field.repeated && scalar_wire(kind).is_some() => {
                        // Packed.
                        let mut packed = Wire(wire.delimited()?);
                        let items = list(slot);
                        while !packed.0.is_empty() {
                            items.push(Item::Scalar(read(&mut packed, scalar_wire(kind))?));
                        }
                    }
                    (kind, w) if scalar_wire(kind) == Some(w) => {
                        let raw = read(&mut wire, Some(w))?;
                        if field.repeated {
                            list(slot).push(Item::Scalar(raw));
                        } else {
                            *slot = Some(Value::Scalar(raw));
                        }
                    }
                    // Not the field's wire type: protobuf keeps it as an unknown field.
                    (_, w) => wire.skip(w)?,
                }
            }
        }
        let py = self.py;
        let out = PyDict::new(py);
        let mut set = vec![false; plan.fields.len()];
        // Set fields by number, as ListFields() orders them; a field without presence holding
        // its default is not set.
        for &i in &plan.numbered {
            let field = &plan.fields[i];
            let value = match values[i].take() {
                None => continue,
                Some(Value::List(items)) => {
                    let list = PyList::empty(py);
                    for item in items {
                        list.append(match item {
                            Item::Scalar(raw) => self.scalar(field.kind, raw)?,
                            Item::Text(text) => self.text(field.kind, text)?,
                            Item::Message(bytes) => self.nested(field.kind, &[bytes])?,
                        })?;
                    }
                    list.into_any()
                }
                Some(Value::Scalar(raw)) => {
                    if !field.presence && is_zero(raw) {
                        continue;
                    }
                    self.scalar(field.kind, raw)?
                }
                Some(Value::Text(text)) => {
                    if !field.presence && text.is_empty() {
                        continue;
                    }
                    self.text(field.kind, text)?
                }
                Some(Value::Parts(parts)) => self.nested(field.kind, &parts)?,
            };
            out.set_item(&field.name, value)?;
            set[i] = true;
        }
        // Then every field without presence that is not set, at its default.
        for (field, _) in plan
            .fields
            .iter()
            .zip(set)
            .filter(|(f, set)| !f.presence && !set)
        {
            let default = if field.repeated {
                PyList::empty(py).into_any()
            } else {
                match field.kind {
                    Kind::String | Kind::Bytes => self.text(field.kind, b"")?,
                    kind => self.scalar(kind, Raw::Varint(0))?,
                }
            };
            out.set_item(&field.name, default)?;
        }
        Ok(out)
    }

    fn nested(&self, kind: Kind, parts: &[&[u8]]) -> PyResult<Bound<'py, PyAny>> {
        match kind {
            Kind::Message(i) => Ok(self.message(i, parts)?.into_any()),
            Kind::Timestamp | Kind::Duration => {
                let (mut seconds, mut nanos) = (0i64, 0i32);
                for part in parts {
                    let mut wire = Wire(part);
                    while !wire.0.is_empty() {
                        match wire.varint()? {
                            0x08 => seconds = wire.varint()? as i64,
                            0x10 => nanos = wire.varint()? as i64 as i32,
                            key => wire.skip(key & 7)?,
                        }
                    }
                }
                let text = if kind == Kind::Timestamp {
                    timestamp(seconds, nanos)?
                } else {
                    duration(seconds, nanos)?
                };
                text.into_bound_py_any(self.py)
            }
            _ => Err(malformed("a message where a scalar belongs")),
        }
    }

    fn text(&self, kind: Kind, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        if kind == Kind::Bytes {
            return base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into_bound_py_any(self.py);
        }
        std::str::from_utf8(bytes)
            .map_err(|_| malformed("a string that is not UTF-8"))?
            .into_bound_py_any(self.py)
    }

    fn scalar(&self, kind: Kind, raw: Raw) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        let (v, f8, f4) = match raw {
            Raw::Varint(v) => (v, [0; 8], [0; 4]),
            Raw::Fixed64(b) => (u64::from_le_bytes(b), b, [0; 4]),
            Raw::Fixed32(b) => (u64::from(u32::from_le_bytes(b)), [0; 8], b),
        };
        match kind {
            Kind::Double => double(f64::from_le_bytes(f8)).into_bound_py_any(py),
            Kind::Float => shortest(f32::from_le_bytes(f4)).into_bound_py_any(py),
            Kind::Int32 => (v as i64 as i32).into_bound_py_any(py),
            Kind::Sint32 => (zigzag(v) as i32).into_bound_py_any(py),
            Kind::Sfixed32 => (v as u32 as i32).into_bound_py_any(py),
            Kind::Uint32 | Kind::Fixed32 => (v as u32).into_bound_py_any(py),
            Kind::Int64 | Kind::Sfixed64 => (v as i64).to_string().into_bound_py_any(py),
            Kind::Sint64 => zigzag(v).to_string().into_bound_py_any(py),
            Kind::Uint64 | Kind::Fixed64 => v.to_string().into_bound_py_any(py),
            Kind::Bool => (v != 0).into_bound_py_any(py),
            // An open enum: a number it does not name stays a number.
            Kind::Enum(e) => {
                let n = v as i64 as i32;
                match self.plans.enums[e].get(&n) {
                    Some(name) => name.into_bound_py_any(py),
                    None => n.into_bound_py_any(py),
                }
            }
            _ => Err(malformed("a scalar where a message or text belongs")),
        }
    }
}

/// A repeated field's list, started when it is first met.
fn list<'s, 'a>(slot: &'s mut Option<Value<'a>>) -> &'s mut Vec<Item<'a>> {
    if !matches!(slot, Some(Value::List(_))) {
        *slot = Some(Value::List(Vec::new()));
    }
    match slot {
        Some(Value::List(items)) => items,
        _ => unreachable!("set above"),
    }
}

/// The wire type a scalar kind is encoded with (`None`: not a scalar).
fn scalar_wire(kind: Kind) -> Option<u64> {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => Some(1),
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => Some(5),
        Kind::Int32
        | Kind::Sint32
        | Kind::Uint32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Uint64
        | Kind::Bool
        | Kind::Enum(_) => Some(0),
        _ => None,
    }
}

fn read(wire: &mut Wire<'_>, wire_type: Option<u64>) -> PyResult<Raw> {
    match wire_type {
        Some(0) => Ok(Raw::Varint(wire.varint()?)),
        Some(1) => Ok(Raw::Fixed64(wire.fixed()?)),
        Some(5) => Ok(Raw::Fixed32(wire.fixed()?)),
        _ => Err(malformed("a scalar's wire type")),
    }
}

/// Whether a field without presence holds its default (protobuf compares the bits: -0.0 is
/// set).
fn is_zero(raw: Raw) -> bool {
    match raw {
        Raw::Varint(v) => v == 0,
        Raw::Fixed64(b) => b == [0; 8],
        Raw::Fixed32(b) => b == [0; 4],
    }
}

fn zigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A non-finite number as the mapping spells it, else `None`.
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("Infinity")
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// A number or the name of a non-finite one.
#[derive(IntoPyObject)]
enum Number {
    Finite(f64),
    Named(&'static str),
}

fn double(v: f64) -> Number {
    non_finite(v).map_or(Number::Finite(v), Number::Named)
}

/// protobuf's `ToShortestFloat`: the value rounded to 6 significant digits, then 7, 8, … until
/// it reads back as the same `float` (each rounding correctly rounded, as Python's is).
fn shortest(v: f32) -> Number {
    if let Some(name) = non_finite(f64::from(v)) {
        return Number::Named(name);
    }
    let exact = f64::from(v);
    for digits in 6..=17 {
        let rounded: f64 = format!("{:.*e}", digits - 1, exact)
            .parse()
            .expect("a formatted float parses");
        if rounded as f32 == v {
            return Number::Finite(rounded);
        }
    }
    Number::Finite(exact)
}

/// A `Timestamp` as `Timestamp.ToJsonString()` writes it (UTC, 0, 3, 6 or 9 fractional digits:
/// prost-types' `Display`, within the range protobuf accepts).
fn timestamp(seconds: i64, nanos: i32) -> PyResult<String> {
    // 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, as protobuf checks.
    if !(-62_135_596_800..=253_402_300_799).contains(&seconds)
        || !(0..1_000_000_000).contains(&nanos)
    {
        return Err(PyValueError::new_err(format!(
            "Timestamp is not valid: {seconds} s, {nanos} ns"
        )));
    }
    Ok(prost_types::Timestamp { seconds, nanos }.to_string())
}

/// A `Duration` as `Duration.ToJsonString()` writes it (prost-types' `Display`, within the range
/// protobuf accepts).
fn duration(seconds: i64, nanos: i32) -> PyResult<String> {
    if !(-315_576_000_000..=315_576_000_000).contains(&seconds)
        || nanos.unsigned_abs() >= 1_000_000_000
        || (seconds != 0 && nanos != 0 && (seconds < 0) != (nanos < 0))
    {
        return Err(PyValueError::new_err(format!(
            "Duration is not valid: {seconds} s, {nanos} ns"
        )));
    }
    Ok(prost_types::Duration { seconds, nanos }.to_string())
}
