#include "formats/pickle_writer.h"

#include <bit>

namespace cartserve::pickle {

PickleWriter::PickleWriter() {
  op(0x80);  // PROTO
  op(2);
}

void PickleWriter::raw32(uint32_t v) {
  for (int i = 0; i < 4; ++i)
    out_.push_back(static_cast<char>(v >> (8 * i)));
}

void PickleWriter::none() {
  op('N');
}
void PickleWriter::boolean(bool v) {
  op(v ? 0x88 : 0x89);
}

void PickleWriter::integer(int64_t v) {
  if (v >= 0 && v < 256) {
    op('K');
    op(static_cast<uint8_t>(v));
  } else if (v >= 0 && v < 65536) {
    op('M');
    op(static_cast<uint8_t>(v));
    op(static_cast<uint8_t>(v >> 8));
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    op('J');
    raw32(static_cast<uint32_t>(static_cast<int32_t>(v)));
  } else {
    // LONG1: minimal little-endian two's complement.
    std::string b;
    uint64_t u = static_cast<uint64_t>(v);
    for (int i = 0; i < 8; ++i)
      b.push_back(static_cast<char>(u >> (8 * i)));
    while (b.size() > 1) {
      const uint8_t last = static_cast<uint8_t>(b.back());
      const uint8_t prev = static_cast<uint8_t>(b[b.size() - 2]);
      if ((last == 0x00 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80))) {
        b.pop_back();
      } else {
        break;
      }
    }
    op(0x8a);
    op(static_cast<uint8_t>(b.size()));
    out_ += b;
  }
}

void PickleWriter::real(double v) {
  op('G');
  const uint64_t u = std::bit_cast<uint64_t>(v);
  for (int i = 7; i >= 0; --i)
    out_.push_back(static_cast<char>(u >> (8 * i)));
}

void PickleWriter::str(std::string_view s) {
  if (auto it = memo_strings_.find(std::string(s)); it != memo_strings_.end()) {
    get(it->second);
    return;
  }
  op('X');
  raw32(static_cast<uint32_t>(s.size()));
  out_ += s;
  memo_strings_.emplace(std::string(s), put());
}

void PickleWriter::bytes(std::string_view b) {
  if (b.size() < 256) {
    op('C');
    op(static_cast<uint8_t>(b.size()));
  } else {
    op('B');
    raw32(static_cast<uint32_t>(b.size()));
  }
  out_ += b;
}

void PickleWriter::global(std::string_view module, std::string_view name) {
  std::string key = std::string(module) + "\n" + std::string(name) + "\n";
  if (auto it = memo_globals_.find(key); it != memo_globals_.end()) {
    get(it->second);
    return;
  }
  op('c');
  out_ += key;
  memo_globals_.emplace(std::move(key), put());
}

void PickleWriter::mark() {
  op('(');
}
void PickleWriter::empty_tuple() {
  op(')');
}
void PickleWriter::tuple() {
  op('t');
}
void PickleWriter::tuple_n(int n) {
  op(static_cast<uint8_t>(0x84 + n));
}
void PickleWriter::empty_list() {
  op(']');
}
void PickleWriter::appends() {
  op('e');
}
void PickleWriter::empty_dict() {
  op('}');
}
void PickleWriter::setitems() {
  op('u');
}
void PickleWriter::reduce() {
  op('R');
}
void PickleWriter::newobj() {
  op(0x81);
}
void PickleWriter::build() {
  op('b');
}
void PickleWriter::binpersid() {
  op('Q');
}

uint32_t PickleWriter::put() {
  const uint32_t i = next_memo_++;
  if (i < 256) {
    op('q');
    op(static_cast<uint8_t>(i));
  } else {
    op('r');
    raw32(i);
  }
  return i;
}

void PickleWriter::get(uint32_t index) {
  if (index < 256) {
    op('h');
    op(static_cast<uint8_t>(index));
  } else {
    op('j');
    raw32(index);
  }
}

std::string PickleWriter::finish() {
  op('.');
  return std::move(out_);
}

}  // namespace cartserve::pickle
