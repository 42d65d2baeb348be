// Restricted unpickler (pickle protocols 2 to 5) producing an inert value
// tree. Nothing is ever imported, called or executed: a global named by
// GLOBAL / STACK_GLOBAL must be on the caller's allowlist (else the stream is
// refused with kPermissionDenied and the global's name), and REDUCE / NEWOBJ /
// BUILD on an allowlisted global only build typed nodes (see GlobalRole).
//
// Supported opcodes: every binary opcode of protocols 1 to 5 (MARK/stack
// discipline, memo with BINPUT/LONG_BINPUT/MEMOIZE/BINGET/LONG_BINGET, FRAME,
// ints incl. LONG1/LONG4 within int64, BINFLOAT, str/bytes/bytearray, tuples,
// lists, dicts, sets, BINPERSID through a caller callback). Refused with a
// clear error: protocol-0 text opcodes, INST/OBJ, EXT1/2/4 (extension
// registry), PERSID, and protocol 5 out-of-band buffers (NEXT_BUFFER,
// READONLY_BUFFER).
//
// NOTE: the input is untrusted. Every length is checked against the bytes
// left, the mark stack, node count and stream size are bounded (Limits), and
// values live in an arena owned by the Document, so self-referencing
// containers (possible through the memo) cannot leak. Code that walks a tree
// must bound its recursion depth (cycles are possible).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"

namespace cartserve::pickle {

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kFloat,
  kStr,
  kBytes,
  kTuple,
  kList,
  kDict,
  kSet,
  kGlobal,  // an allowlisted global used as a value (e.g. a storage type)
  kObject,  // the result of REDUCE / NEWOBJ on an allowlisted global (+ BUILD state)
};
const char* kind_name(Kind k);

// What an allowlisted global may do.
enum class GlobalRole : uint8_t {
  kDictFactory,   // REDUCE with () or ([(key, value), ...],) gives a kDict (OrderedDict)
  kSetFactory,    // REDUCE with () or (items,) gives a kSet (set, frozenset)
  kTupleFactory,  // REDUCE with (tuple or list,) gives a kTuple (torch.Size)
  kFunction,      // REDUCE gives a kObject {global, args} (torch rebuild functions)
  kClass,         // NEWOBJ / NEWOBJ_EX / REDUCE give a kObject; BUILD attaches its state
  kReference,     // a value only; calling it is refused (storage types, dtypes)
};

struct Global {
  std::string module;  // "__builtin__" / "copy_reg" are normalised to "builtins" / "copyreg"
  std::string name;
  GlobalRole role = GlobalRole::kReference;
  std::string qualified() const { return module + "." + name; }
};

class Allowlist {
 public:
  void allow(std::string module, std::string name, GlobalRole role);
  // Qualified "module.name" with the last dot as separator.
  void allow(std::string_view qualified, GlobalRole role);
  const Global* find(std::string_view module, std::string_view name) const;
  bool empty() const { return globals_.empty(); }

 private:
  std::map<std::string, Global, std::less<>> globals_;  // key: "module\nname"
};

struct Value {
  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0.0;
  std::string text;  // kStr (UTF-8 as stored), kBytes
  // kTuple, kList, kSet items in order.
  std::vector<const Value*> items;
  // kDict entries in insertion order (a repeated key replaces the value in place).
  std::vector<std::pair<const Value*, const Value*>> entries;
  const Global* global = nullptr;  // kGlobal, kObject
  const Value* args = nullptr;     // kObject: argument tuple
  const Value* state = nullptr;    // kObject: BUILD state, or nullptr
  bool ordered = false;            // kDict built by an OrderedDict factory
  bool frozen = false;             // kSet from FROZENSET / frozenset
  bool mutable_bytes = false;      // kBytes from BYTEARRAY8

  bool is(Kind k) const { return kind == k; }
  bool is_str(std::string_view s) const { return kind == Kind::kStr && text == s; }
  // kObject / kGlobal whose global is module.name.
  bool is_global(std::string_view qualified) const;
  // kDict lookup of a str key; nullptr when absent or not a dict.
  const Value* find(std::string_view key) const;
  // Short description for messages: "list of 3", "str 'abc'", "object torch._utils...".
  std::string describe() const;
};

// Owns the nodes of one unpickled stream.
class Document {
 public:
  Document() = default;
  Document(Document&&) noexcept = default;
  Document& operator=(Document&&) noexcept = default;

  const Value& root() const { return *root_; }
  int protocol() const { return protocol_; }
  size_t node_count() const { return nodes_.size(); }

  // For persistent_load callbacks: new nodes owned by this document.
  Value* make(Kind kind);
  const Global* intern(const Global& g);

 private:
  friend class Unpickler;
  std::vector<std::unique_ptr<Value>> nodes_;
  std::vector<std::unique_ptr<Global>> globals_;
  const Value* root_ = nullptr;
  int protocol_ = 0;
};

struct Limits {
  size_t max_bytes = size_t{64} << 20;  // stream size
  size_t max_nodes = size_t{2} << 20;   // values created
  size_t max_marks = 4096;              // nesting of MARK
  size_t max_memo = size_t{2} << 20;    // memo entries
};

// Resolves a BINPERSID id into a value; errors propagate (with the offset).
using PersistentLoad = std::function<Result<const Value*>(Document& doc, const Value& pid)>;

struct Options {
  const Allowlist* allowlist = nullptr;  // required; an empty list refuses every global
  PersistentLoad persistent_load;        // unset: BINPERSID is refused
  Limits limits;
  std::string label = "pickle";  // names the stream in messages
};

Result<Document> unpickle(std::span<const uint8_t> bytes, const Options& options);

// Compact rendering for tools and debugging (bounded depth, items and length).
std::string to_debug_string(const Value& v, int max_depth = 8, size_t max_items = 16);

}  // namespace cartserve::pickle
