// Pickle protocol-2 emitter: the opcodes torch.save's default protocol uses
// (torch.load's weights_only unpickler reads protocol 2 but not FRAME, so we
// never emit protocol 4+ framing). A thin, stack-shaped API: callers emit
// values in pickle order, e.g. a dict {"a": 1} is
//   empty_dict(); mark(); str("a"); integer(1); setitems();
// Globals and strings are memoized (BINPUT once, BINGET afterwards).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cartserve::pickle {

class PickleWriter {
 public:
  PickleWriter();  // emits PROTO 2

  void none();
  void boolean(bool v);
  void integer(int64_t v);         // BININT1 / BININT2 / BININT / LONG1
  void real(double v);             // BINFLOAT
  void str(std::string_view s);    // BINUNICODE (memoized)
  void bytes(std::string_view b);  // SHORT_BINBYTES / BINBYTES
  void global(std::string_view module, std::string_view name);  // GLOBAL (memoized)

  void mark();
  void empty_tuple();
  void tuple();         // from the last mark
  void tuple_n(int n);  // TUPLE1..3 from the top n values
  void empty_list();
  void appends();  // items since the mark into the list below it
  void empty_dict();
  void setitems();   // key/value pairs since the mark into the dict below it
  void reduce();     // callable args -> callable(*args)
  void newobj();     // cls args -> cls.__new__(cls, *args)
  void build();      // obj state -> obj with state
  void binpersid();  // pid -> persistent_load(pid)
  // Memoizes the top of the stack; returns its index for get().
  uint32_t put();
  void get(uint32_t index);

  // Appends STOP and returns the stream (the writer is spent).
  std::string finish();

 private:
  void op(uint8_t code) { out_.push_back(static_cast<char>(code)); }
  void raw32(uint32_t v);
  std::string out_;
  uint32_t next_memo_ = 0;
  std::unordered_map<std::string, uint32_t> memo_strings_;
  std::unordered_map<std::string, uint32_t> memo_globals_;
};

}  // namespace cartserve::pickle
