#include "formats/pickle.h"

#include <bit>
#include <cstring>
#include <new>

namespace cartserve::pickle {

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kStr:
      return "str";
    case Kind::kBytes:
      return "bytes";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kSet:
      return "set";
    case Kind::kGlobal:
      return "global";
    case Kind::kObject:
      return "object";
  }
  return "?";
}

namespace {

std::string normalise_module(std::string_view m) {
  if (m == "__builtin__") return "builtins";
  if (m == "copy_reg") return "copyreg";
  return std::string(m);
}

std::string global_key(std::string_view module, std::string_view name) {
  std::string k = normalise_module(module);
  k += '\n';
  k += name;
  return k;
}

// Printable, bounded form of untrusted text for messages.
std::string printable(std::string_view s, size_t max = 80) {
  std::string out;
  for (unsigned char c : s.substr(0, max)) {
    if (c >= 0x20 && c < 0x7f && c != '\'') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace

void Allowlist::allow(std::string module, std::string name, GlobalRole role) {
  Global g{normalise_module(module), std::move(name), role};
  globals_[global_key(g.module, g.name)] = std::move(g);
}

void Allowlist::allow(std::string_view qualified, GlobalRole role) {
  const size_t dot = qualified.rfind('.');
  if (dot == std::string_view::npos) {
    allow(std::string(), std::string(qualified), role);
  } else {
    allow(std::string(qualified.substr(0, dot)), std::string(qualified.substr(dot + 1)), role);
  }
}

const Global* Allowlist::find(std::string_view module, std::string_view name) const {
  auto it = globals_.find(global_key(module, name));
  return it == globals_.end() ? nullptr : &it->second;
}

bool Value::is_global(std::string_view qualified) const {
  if ((kind != Kind::kObject && kind != Kind::kGlobal) || !global) return false;
  const auto& g = *global;
  return qualified.size() == g.module.size() + 1 + g.name.size() &&
         qualified.substr(0, g.module.size()) == g.module && qualified[g.module.size()] == '.' &&
         qualified.substr(g.module.size() + 1) == g.name;
}

const Value* Value::find(std::string_view key) const {
  if (kind != Kind::kDict) return nullptr;
  for (const auto& [k, v] : entries) {
    if (k->kind == Kind::kStr && k->text == key) return v;
  }
  return nullptr;
}

std::string Value::describe() const {
  switch (kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return boolean ? "True" : "False";
    case Kind::kInt:
      return fmt::format("int {}", integer);
    case Kind::kFloat:
      return fmt::format("float {}", real);
    case Kind::kStr:
      return fmt::format("str '{}'", printable(text, 40));
    case Kind::kBytes:
      return fmt::format("bytes of {}", text.size());
    case Kind::kTuple:
    case Kind::kList:
    case Kind::kSet:
      return fmt::format("{} of {}", kind_name(kind), items.size());
    case Kind::kDict:
      return fmt::format("dict of {}", entries.size());
    case Kind::kGlobal:
      return fmt::format("global {}", global ? global->qualified() : "?");
    case Kind::kObject:
      return fmt::format("object {}", global ? global->qualified() : "?");
  }
  return "?";
}

Value* Document::make(Kind kind) {
  nodes_.push_back(std::make_unique<Value>());
  nodes_.back()->kind = kind;
  return nodes_.back().get();
}

const Global* Document::intern(const Global& g) {
  for (const auto& p : globals_) {
    if (p->module == g.module && p->name == g.name) return p.get();
  }
  globals_.push_back(std::make_unique<Global>(g));
  return globals_.back().get();
}

// ---------------------------------------------------------------------------

class Unpickler {
 public:
  Unpickler(std::span<const uint8_t> bytes, const Options& options)
      : d_(bytes.data()), size_(bytes.size()), opt_(options) {}

  Result<Document> run();

 private:
  template <typename... Args>
  Status fail(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
    return Status(code, fmt::format("{}: byte {}: {}", opt_.label, op_pos_,
                                    fmt::format(f, std::forward<Args>(args)...)));
  }
  template <typename... Args>
  Status corrupt(fmt::format_string<Args...> f, Args&&... args) {
    return fail(ErrorCode::kCorrupt, f, std::forward<Args>(args)...);
  }

  bool has(uint64_t n) const { return n <= size_ - pos_; }
  uint64_t le(size_t n) {  // caller checked has(n)
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(d_[pos_ + i]) << (8 * i);
    pos_ += n;
    return v;
  }

  Result<Value*> make(Kind kind);
  Result<Value*> pop();
  Result<Value*> top();
  Result<std::vector<Value*>> pop_mark();
  Status push(Value* v);

  Status op_int_bytes(size_t len_bytes);        // LONG1 / LONG4
  Status op_text(size_t len_bytes, Kind kind);  // str / bytes with a length prefix
  Status op_global(Value* module, Value* name);
  Status op_global_line();
  Status op_reduce();
  Status op_newobj(bool ex);
  Status op_build();
  Status op_persid();
  Status set_item(Value* dict, Value* key, Value* value);
  Status memo_put(uint64_t index);
  Status memo_get(uint64_t index);

  const uint8_t* d_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t op_pos_ = 0;
  const Options& opt_;
  Document doc_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  // Per dict: key fingerprint -> index in entries (only while unpickling).
  std::unordered_map<const Value*, std::unordered_map<std::string, size_t>> dict_index_;
};

Result<Value*> Unpickler::make(Kind kind) {
  if (doc_.nodes_.size() >= opt_.limits.max_nodes) {
    return fail(ErrorCode::kResourceExhausted, "more than {} values", opt_.limits.max_nodes);
  }
  return doc_.make(kind);
}

Status Unpickler::push(Value* v) {
  stack_.push_back(v);
  return {};
}

Result<Value*> Unpickler::pop() {
  const size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) return corrupt("stack underflow");
  Value* v = stack_.back();
  stack_.pop_back();
  return v;
}

Result<Value*> Unpickler::top() {
  const size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) return corrupt("stack underflow");
  return stack_.back();
}

Result<std::vector<Value*>> Unpickler::pop_mark() {
  if (marks_.empty()) return corrupt("no MARK on the stack");
  const size_t m = marks_.back();
  marks_.pop_back();
  std::vector<Value*> items(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
  stack_.resize(m);
  return items;
}

Status Unpickler::memo_put(uint64_t index) {
  CS_ASSIGN_OR_RETURN(Value * v, top());
  if (memo_.size() >= opt_.limits.max_memo && !memo_.count(index)) {
    return fail(ErrorCode::kResourceExhausted, "more than {} memo entries", opt_.limits.max_memo);
  }
  memo_[index] = v;
  return {};
}

Status Unpickler::memo_get(uint64_t index) {
  auto it = memo_.find(index);
  if (it == memo_.end()) return corrupt("memo entry {} is not defined", index);
  return push(it->second);
}

namespace {

std::string key_fingerprint(const Value* k) {
  switch (k->kind) {
    case Kind::kStr:
      return "s" + k->text;
    case Kind::kBytes:
      return "b" + k->text;
    case Kind::kInt:
      return "i" + std::to_string(k->integer);
    case Kind::kBool:
      return k->boolean ? "i1" : "i0";  // True == 1 in Python
    case Kind::kNone:
      return "n";
    case Kind::kFloat:
      return fmt::format("f{:016x}", std::bit_cast<uint64_t>(k->real));
    default:
      return fmt::format("p{}", static_cast<const void*>(k));  // identity
  }
}

}  // namespace

Status Unpickler::set_item(Value* dict, Value* key, Value* value) {
  if (dict->kind != Kind::kDict) {
    return corrupt("SETITEM(S) on a {} (expected a dict)", kind_name(dict->kind));
  }
  auto& index = dict_index_[dict];
  auto [it, inserted] = index.emplace(key_fingerprint(key), dict->entries.size());
  if (inserted) {
    dict->entries.emplace_back(key, value);
  } else {
    dict->entries[it->second].second = value;
  }
  return {};
}

Status Unpickler::op_int_bytes(size_t len_bytes) {
  if (!has(len_bytes)) return corrupt("truncated LONG length");
  const uint64_t n = le(len_bytes);
  if (!has(n)) return corrupt("LONG of {} bytes runs past the end", n);
  const uint8_t* p = d_ + pos_;
  pos_ += n;
  int64_t v = 0;
  if (n > 0) {
    const bool negative = p[n - 1] & 0x80;
    // Bytes beyond the eighth must be pure sign extension.
    for (uint64_t i = 8; i < n; ++i) {
      if (p[i] != (negative ? 0xff : 0x00)) {
        return fail(ErrorCode::kOutOfRange, "integer of {} bytes does not fit in int64", n);
      }
    }
    uint64_t u = negative ? ~uint64_t{0} : 0;
    const uint64_t m = n < 8 ? n : 8;
    for (uint64_t i = 0; i < m; ++i) {
      u &= ~(uint64_t{0xff} << (8 * i));
      u |= static_cast<uint64_t>(p[i]) << (8 * i);
    }
    if (n > 8 && ((u >> 63) != 0) != negative) {
      return fail(ErrorCode::kOutOfRange, "integer of {} bytes does not fit in int64", n);
    }
    v = static_cast<int64_t>(u);
  }
  CS_ASSIGN_OR_RETURN(Value * x, make(Kind::kInt));
  x->integer = v;
  return push(x);
}

Status Unpickler::op_text(size_t len_bytes, Kind kind) {
  if (!has(len_bytes)) return corrupt("truncated length");
  const uint64_t n = le(len_bytes);
  if (!has(n)) return corrupt("{} of {} bytes runs past the end", kind_name(kind), n);
  CS_ASSIGN_OR_RETURN(Value * x, make(kind));
  x->text.assign(reinterpret_cast<const char*>(d_ + pos_), static_cast<size_t>(n));
  pos_ += n;
  return push(x);
}

Status Unpickler::op_global(Value* module, Value* name) {
  if (module->kind != Kind::kStr || name->kind != Kind::kStr) {
    return corrupt("STACK_GLOBAL needs two str, got {} and {}", kind_name(module->kind),
                   kind_name(name->kind));
  }
  const Global* g = opt_.allowlist ? opt_.allowlist->find(module->text, name->text) : nullptr;
  if (!g) {
    return fail(ErrorCode::kPermissionDenied,
                "refused pickle global '{}.{}': not on the allowlist (nothing is imported or "
                "executed)",
                printable(normalise_module(module->text)), printable(name->text));
  }
  CS_ASSIGN_OR_RETURN(Value * x, make(Kind::kGlobal));
  x->global = doc_.intern(*g);
  return push(x);
}

Status Unpickler::op_global_line() {
  // "module\nname\n"
  Value* parts[2] = {nullptr, nullptr};
  for (auto& part : parts) {
    const uint64_t start = pos_;
    while (pos_ < size_ && d_[pos_] != '\n' && pos_ - start < 1024)
      ++pos_;
    if (pos_ >= size_ || d_[pos_] != '\n') return corrupt("GLOBAL line is truncated or too long");
    CS_ASSIGN_OR_RETURN(part, make(Kind::kStr));
    part->text.assign(reinterpret_cast<const char*>(d_ + start), pos_ - start);
    ++pos_;
  }
  return op_global(parts[0], parts[1]);
}

Status Unpickler::op_reduce() {
  CS_ASSIGN_OR_RETURN(Value * args, pop());
  CS_ASSIGN_OR_RETURN(Value * callable, pop());
  if (callable->kind != Kind::kGlobal) {
    return corrupt("REDUCE on a {} (expected an allowlisted global)", kind_name(callable->kind));
  }
  const Global* g = callable->global;
  if (args->kind != Kind::kTuple) {
    return corrupt("REDUCE of {} with {} arguments (expected a tuple)", g->qualified(),
                   kind_name(args->kind));
  }
  switch (g->role) {
    case GlobalRole::kDictFactory: {
      CS_ASSIGN_OR_RETURN(Value * d, make(Kind::kDict));
      d->ordered = true;
      if (args->items.size() > 1) return corrupt("{} takes at most one argument", g->qualified());
      if (args->items.size() == 1) {
        const Value* pairs = args->items[0];
        if (pairs->kind != Kind::kList && pairs->kind != Kind::kTuple) {
          return corrupt("{} argument must be a list of pairs", g->qualified());
        }
        for (const Value* p : pairs->items) {
          if ((p->kind != Kind::kTuple && p->kind != Kind::kList) || p->items.size() != 2) {
            return corrupt("{} argument must be a list of pairs", g->qualified());
          }
          CS_RETURN_IF_ERROR(
              set_item(d, const_cast<Value*>(p->items[0]), const_cast<Value*>(p->items[1])));
        }
      }
      return push(d);
    }
    case GlobalRole::kSetFactory: {
      CS_ASSIGN_OR_RETURN(Value * s, make(Kind::kSet));
      s->frozen = g->name == "frozenset";
      if (args->items.size() > 1) return corrupt("{} takes at most one argument", g->qualified());
      if (args->items.size() == 1) {
        const Value* src = args->items[0];
        if (src->kind != Kind::kList && src->kind != Kind::kTuple && src->kind != Kind::kSet) {
          return corrupt("{} argument must be a list, tuple or set", g->qualified());
        }
        s->items = src->items;
      }
      return push(s);
    }
    case GlobalRole::kTupleFactory: {
      if (args->items.size() != 1 ||
          (args->items[0]->kind != Kind::kTuple && args->items[0]->kind != Kind::kList)) {
        return corrupt("{} takes one tuple argument", g->qualified());
      }
      CS_ASSIGN_OR_RETURN(Value * t, make(Kind::kTuple));
      t->items = args->items[0]->items;
      return push(t);
    }
    case GlobalRole::kFunction:
    case GlobalRole::kClass: {
      CS_ASSIGN_OR_RETURN(Value * o, make(Kind::kObject));
      o->global = g;
      o->args = args;
      return push(o);
    }
    case GlobalRole::kReference:
      break;
  }
  return fail(ErrorCode::kPermissionDenied, "refused to call pickle global '{}' (a value only)",
              g->qualified());
}

Status Unpickler::op_newobj(bool ex) {
  Value* kwargs = nullptr;
  if (ex) {
    CS_ASSIGN_OR_RETURN(kwargs, pop());
  }
  CS_ASSIGN_OR_RETURN(Value * args, pop());
  CS_ASSIGN_OR_RETURN(Value * cls, pop());
  if (cls->kind != Kind::kGlobal) {
    return corrupt("NEWOBJ on a {} (expected an allowlisted class)", kind_name(cls->kind));
  }
  if (cls->global->role != GlobalRole::kClass) {
    return fail(ErrorCode::kPermissionDenied,
                "refused NEWOBJ of pickle global '{}' (not an allowlisted class)",
                cls->global->qualified());
  }
  if (args->kind != Kind::kTuple) return corrupt("NEWOBJ arguments must be a tuple");
  if (kwargs && (kwargs->kind != Kind::kDict || !kwargs->entries.empty())) {
    return fail(ErrorCode::kUnsupported, "NEWOBJ_EX of '{}' with keyword arguments",
                cls->global->qualified());
  }
  CS_ASSIGN_OR_RETURN(Value * o, make(Kind::kObject));
  o->global = cls->global;
  o->args = args;
  return push(o);
}

Status Unpickler::op_build() {
  CS_ASSIGN_OR_RETURN(Value * state, pop());
  CS_ASSIGN_OR_RETURN(Value * obj, top());
  if (obj->kind != Kind::kObject) {
    return corrupt("BUILD on a {} (expected an object)", kind_name(obj->kind));
  }
  if (obj->state && obj->state->kind == Kind::kDict && state->kind == Kind::kDict) {
    // A second BUILD updates the attribute dict, as object.__setstate__ would.
    auto* merged = const_cast<Value*>(obj->state);
    for (const auto& [k, v] : state->entries) {
      CS_RETURN_IF_ERROR(set_item(merged, const_cast<Value*>(k), const_cast<Value*>(v)));
    }
    return {};
  }
  obj->state = state;
  return {};
}

Status Unpickler::op_persid() {
  CS_ASSIGN_OR_RETURN(Value * pid, pop());
  if (!opt_.persistent_load) {
    return fail(ErrorCode::kPermissionDenied, "persistent id ({}) without a loader",
                pid->describe());
  }
  auto r = opt_.persistent_load(doc_, *pid);
  if (!r.ok()) {
    return Status(r.status().code(),
                  fmt::format("{}: byte {}: {}", opt_.label, op_pos_, r.status().message()));
  }
  return push(const_cast<Value*>(*r));
}

Result<Document> Unpickler::run() {
  if (size_ > opt_.limits.max_bytes) {
    return make_error(ErrorCode::kResourceExhausted, "{}: {} bytes exceed the {}-byte limit",
                      opt_.label, size_, opt_.limits.max_bytes);
  }
  if (!opt_.allowlist) {
    return make_error(ErrorCode::kInvalidArgument, "{}: unpickle needs an allowlist", opt_.label);
  }
  while (pos_ < size_) {
    op_pos_ = pos_;
    const uint8_t op = d_[pos_++];
    switch (op) {
      case 0x80: {  // PROTO
        if (!has(1)) return corrupt("truncated PROTO");
        const int proto = d_[pos_++];
        if (proto > 5) return fail(ErrorCode::kUnsupported, "pickle protocol {} (max 5)", proto);
        doc_.protocol_ = proto;
        break;
      }
      case 0x95: {  // FRAME: a length hint; the opcodes follow inline
        if (!has(8)) return corrupt("truncated FRAME");
        const uint64_t n = le(8);
        if (!has(n)) return corrupt("FRAME of {} bytes runs past the end", n);
        break;
      }
      case '.': {  // STOP
        CS_ASSIGN_OR_RETURN(Value * result, pop());
        doc_.root_ = result;
        return std::move(doc_);
      }
      case '(':  // MARK
        if (marks_.size() >= opt_.limits.max_marks) {
          return fail(ErrorCode::kResourceExhausted, "MARK nesting deeper than {}",
                      opt_.limits.max_marks);
        }
        marks_.push_back(stack_.size());
        break;
      case '0': {  // POP (pops a MARK when the top of stack is one)
        if (!marks_.empty() && marks_.back() == stack_.size()) {
          marks_.pop_back();
        } else {
          CS_RETURN_IF_ERROR(pop().status());
        }
        break;
      }
      case '1': {  // POP_MARK
        CS_RETURN_IF_ERROR(pop_mark().status());
        break;
      }
      case '2': {  // DUP
        CS_ASSIGN_OR_RETURN(Value * v, top());
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 'N': {
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kNone));
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kBool));
        v->boolean = op == 0x88;
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 'J':    // BININT (signed 32)
      case 'K':    // BININT1
      case 'M': {  // BININT2
        const size_t n = op == 'J' ? 4 : op == 'K' ? 1 : 2;
        if (!has(n)) return corrupt("truncated integer");
        const uint64_t u = le(n);
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kInt));
        v->integer =
            op == 'J' ? static_cast<int64_t>(static_cast<int32_t>(u)) : static_cast<int64_t>(u);
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 0x8a:
        CS_RETURN_IF_ERROR(op_int_bytes(1));
        break;  // LONG1
      case 0x8b:
        CS_RETURN_IF_ERROR(op_int_bytes(4));
        break;     // LONG4
      case 'G': {  // BINFLOAT (big-endian)
        if (!has(8)) return corrupt("truncated BINFLOAT");
        uint64_t u = 0;
        for (int i = 0; i < 8; ++i)
          u = (u << 8) | d_[pos_ + i];
        pos_ += 8;
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kFloat));
        v->real = std::bit_cast<double>(u);
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 0x8c:
        CS_RETURN_IF_ERROR(op_text(1, Kind::kStr));
        break;  // SHORT_BINUNICODE
      case 'X':
        CS_RETURN_IF_ERROR(op_text(4, Kind::kStr));
        break;  // BINUNICODE
      case 0x8d:
        CS_RETURN_IF_ERROR(op_text(8, Kind::kStr));
        break;  // BINUNICODE8
      case 'U':
        CS_RETURN_IF_ERROR(op_text(1, Kind::kStr));
        break;  // SHORT_BINSTRING
      case 'T':
        CS_RETURN_IF_ERROR(op_text(4, Kind::kStr));
        break;  // BINSTRING
      case 'C':
        CS_RETURN_IF_ERROR(op_text(1, Kind::kBytes));
        break;  // SHORT_BINBYTES
      case 'B':
        CS_RETURN_IF_ERROR(op_text(4, Kind::kBytes));
        break;  // BINBYTES
      case 0x8e:
        CS_RETURN_IF_ERROR(op_text(8, Kind::kBytes));
        break;      // BINBYTES8
      case 0x96: {  // BYTEARRAY8
        CS_RETURN_IF_ERROR(op_text(8, Kind::kBytes));
        stack_.back()->mutable_bytes = true;
        break;
      }
      case 0x97:  // NEXT_BUFFER
      case 0x98:  // READONLY_BUFFER
        return fail(ErrorCode::kUnsupported,
                    "protocol 5 out-of-band buffer opcode 0x{:02x} (out-of-band data is not "
                    "supported)",
                    op);
      case ')': {  // EMPTY_TUPLE
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kTuple));
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        const size_t n = op - 0x84u;
        const size_t floor = marks_.empty() ? 0 : marks_.back();
        if (stack_.size() < floor + n) return corrupt("stack underflow in TUPLE{}", n);
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kTuple));
        v->items.assign(stack_.end() - static_cast<ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 't':     // TUPLE
      case 'l':     // LIST
      case 0x91: {  // FROZENSET
        CS_ASSIGN_OR_RETURN(auto items, pop_mark());
        CS_ASSIGN_OR_RETURN(Value * v, make(op == 't'   ? Kind::kTuple
                                            : op == 'l' ? Kind::kList
                                                        : Kind::kSet));
        v->items.assign(items.begin(), items.end());
        v->frozen = op == 0x91;
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case ']': {  // EMPTY_LIST
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kList));
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case '}': {  // EMPTY_DICT
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kDict));
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 0x8f: {  // EMPTY_SET
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kSet));
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 'd': {  // DICT
        CS_ASSIGN_OR_RETURN(auto items, pop_mark());
        if (items.size() % 2) return corrupt("DICT with an odd number of items");
        CS_ASSIGN_OR_RETURN(Value * v, make(Kind::kDict));
        for (size_t i = 0; i < items.size(); i += 2) {
          CS_RETURN_IF_ERROR(set_item(v, items[i], items[i + 1]));
        }
        CS_RETURN_IF_ERROR(push(v));
        break;
      }
      case 'a': {  // APPEND
        CS_ASSIGN_OR_RETURN(Value * item, pop());
        CS_ASSIGN_OR_RETURN(Value * list, top());
        if (list->kind != Kind::kList) {
          return corrupt("APPEND to a {} (expected a list)", kind_name(list->kind));
        }
        list->items.push_back(item);
        break;
      }
      case 'e': {  // APPENDS
        CS_ASSIGN_OR_RETURN(auto items, pop_mark());
        CS_ASSIGN_OR_RETURN(Value * list, top());
        if (list->kind != Kind::kList) {
          return corrupt("APPENDS to a {} (expected a list)", kind_name(list->kind));
        }
        list->items.insert(list->items.end(), items.begin(), items.end());
        break;
      }
      case 0x90: {  // ADDITEMS
        CS_ASSIGN_OR_RETURN(auto items, pop_mark());
        CS_ASSIGN_OR_RETURN(Value * set, top());
        if (set->kind != Kind::kSet) {
          return corrupt("ADDITEMS to a {} (expected a set)", kind_name(set->kind));
        }
        set->items.insert(set->items.end(), items.begin(), items.end());
        break;
      }
      case 's': {  // SETITEM
        CS_ASSIGN_OR_RETURN(Value * value, pop());
        CS_ASSIGN_OR_RETURN(Value * key, pop());
        CS_ASSIGN_OR_RETURN(Value * dict, top());
        CS_RETURN_IF_ERROR(set_item(dict, key, value));
        break;
      }
      case 'u': {  // SETITEMS
        CS_ASSIGN_OR_RETURN(auto items, pop_mark());
        if (items.size() % 2) return corrupt("SETITEMS with an odd number of items");
        CS_ASSIGN_OR_RETURN(Value * dict, top());
        for (size_t i = 0; i < items.size(); i += 2) {
          CS_RETURN_IF_ERROR(set_item(dict, items[i], items[i + 1]));
        }
        break;
      }
      case 'q':    // BINPUT
      case 'r': {  // LONG_BINPUT
        const size_t n = op == 'q' ? 1 : 4;
        if (!has(n)) return corrupt("truncated PUT index");
        CS_RETURN_IF_ERROR(memo_put(le(n)));
        break;
      }
      case 0x94:  // MEMOIZE
        CS_RETURN_IF_ERROR(memo_put(memo_.size()));
        break;
      case 'h':    // BINGET
      case 'j': {  // LONG_BINGET
        const size_t n = op == 'h' ? 1 : 4;
        if (!has(n)) return corrupt("truncated GET index");
        CS_RETURN_IF_ERROR(memo_get(le(n)));
        break;
      }
      case 'c':
        CS_RETURN_IF_ERROR(op_global_line());
        break;      // GLOBAL
      case 0x93: {  // STACK_GLOBAL
        CS_ASSIGN_OR_RETURN(Value * name, pop());
        CS_ASSIGN_OR_RETURN(Value * module, pop());
        CS_RETURN_IF_ERROR(op_global(module, name));
        break;
      }
      case 'R':
        CS_RETURN_IF_ERROR(op_reduce());
        break;
      case 0x81:
        CS_RETURN_IF_ERROR(op_newobj(false));
        break;  // NEWOBJ
      case 0x92:
        CS_RETURN_IF_ERROR(op_newobj(true));
        break;  // NEWOBJ_EX
      case 'b':
        CS_RETURN_IF_ERROR(op_build());
        break;
      case 'Q':
        CS_RETURN_IF_ERROR(op_persid());
        break;  // BINPERSID
      case 0x82:
      case 0x83:
      case 0x84:
        return fail(ErrorCode::kPermissionDenied,
                    "extension-registry opcode EXT{} refused (it names globals indirectly)",
                    op == 0x82   ? 1
                    : op == 0x83 ? 2
                                 : 4);
      case 'i':
      case 'o':
        return fail(ErrorCode::kPermissionDenied,
                    "protocol 0/1 instance opcode '{}' refused (INST/OBJ call classes)",
                    static_cast<char>(op));
      case 'P':
        return fail(ErrorCode::kUnsupported, "text persistent id (PERSID) is not supported");
      case 'F':
      case 'I':
      case 'L':
      case 'S':
      case 'V':
      case 'g':
      case 'p':
        return fail(ErrorCode::kUnsupported,
                    "protocol 0 text opcode '{}' is not supported (protocols 2 to 5 only)",
                    static_cast<char>(op));
      default:
        return corrupt("unknown opcode 0x{:02x}", op);
    }
  }
  op_pos_ = pos_;
  return corrupt("stream ends without STOP");
}

Result<Document> unpickle(std::span<const uint8_t> bytes, const Options& options) {
  try {
    Unpickler u(bytes, options);
    return u.run();
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "{}: out of memory while unpickling",
                      options.label);
  }
}

// ---------------------------------------------------------------------------

namespace {

constexpr size_t kMaxRender = 4096;  // shared subtrees can make a tree exponentially wide

void render(const Value& v, int depth, size_t max_items, std::string& out) {
  if (depth < 0 || out.size() > kMaxRender) {
    out += "...";
    return;
  }
  const auto seq = [&](const std::vector<const Value*>& items, const char* open,
                       const char* close) {
    out += open;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += ", ";
      if (i == max_items) {
        out += fmt::format("... ({} more)", items.size() - i);
        break;
      }
      render(*items[i], depth - 1, max_items, out);
    }
    out += close;
  };
  switch (v.kind) {
    case Kind::kNone:
      out += "None";
      break;
    case Kind::kBool:
      out += v.boolean ? "True" : "False";
      break;
    case Kind::kInt:
      out += std::to_string(v.integer);
      break;
    case Kind::kFloat:
      out += fmt::format("{}", v.real);
      break;
    case Kind::kStr:
      out += "'" + printable(v.text) + "'";
      break;
    case Kind::kBytes:
      out += fmt::format("b<{} bytes>", v.text.size());
      break;
    case Kind::kTuple:
      seq(v.items, "(", ")");
      break;
    case Kind::kList:
      seq(v.items, "[", "]");
      break;
    case Kind::kSet:
      seq(v.items, "{", "}");
      break;
    case Kind::kDict: {
      out += "{";
      for (size_t i = 0; i < v.entries.size(); ++i) {
        if (i) out += ", ";
        if (i == max_items) {
          out += fmt::format("... ({} more)", v.entries.size() - i);
          break;
        }
        render(*v.entries[i].first, depth - 1, max_items, out);
        out += ": ";
        render(*v.entries[i].second, depth - 1, max_items, out);
      }
      out += "}";
      break;
    }
    case Kind::kGlobal:
      out += v.global->qualified();
      break;
    case Kind::kObject:
      out += v.global->qualified();
      if (v.args) render(*v.args, depth - 1, max_items, out);
      if (v.state) {
        out += ".state=";
        render(*v.state, depth - 1, max_items, out);
      }
      break;
  }
}

}  // namespace

std::string to_debug_string(const Value& v, int max_depth, size_t max_items) {
  std::string out;
  render(v, max_depth, max_items, out);
  if (out.size() > kMaxRender) out.resize(kMaxRender);
  return out;
}

}  // namespace cartserve::pickle
