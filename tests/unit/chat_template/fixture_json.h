// Test-only conversion of fixture JSON into chat template inputs. JSON stays
// out of the library; the server will do the same at its HTTP edge.
#pragma once

#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat_template/chat_template.h"

namespace cartserve::testing {

using OrderedJson = nlohmann::ordered_json;  // keeps Python's dict order

inline TemplateValue to_template_value(const OrderedJson& j) {
  switch (j.type()) {
    case OrderedJson::value_t::null:
      return TemplateValue::none();
    case OrderedJson::value_t::boolean:
      return TemplateValue::boolean(j.get<bool>());
    case OrderedJson::value_t::number_integer:
    case OrderedJson::value_t::number_unsigned:
      return TemplateValue::integer(j.get<int64_t>());
    case OrderedJson::value_t::number_float:
      return TemplateValue::number(j.get<double>());
    case OrderedJson::value_t::string:
      return TemplateValue::string(j.get<std::string>());
    case OrderedJson::value_t::array: {
      TemplateValue::Items items;
      for (const auto& x : j)
        items.push_back(to_template_value(x));
      return TemplateValue::list(std::move(items));
    }
    case OrderedJson::value_t::object: {
      std::vector<std::pair<std::string, TemplateValue>> entries;
      for (const auto& [k, v] : j.items())
        entries.emplace_back(k, to_template_value(v));
      return TemplateValue::dict(std::move(entries));
    }
    default:
      return TemplateValue();
  }
}

// {"role": ..., "content": ..., other keys...} -> ChatMessage.
inline ChatMessage to_chat_message(const OrderedJson& j) {
  ChatMessage m;
  m.role = j.value("role", "");
  if (!j.contains("content")) {
    m.fields.emplace_back("content", TemplateValue::none());  // no content key
  } else if (j["content"].is_string()) {
    m.content = j["content"].get<std::string>();
  } else {
    m.fields.emplace_back("content", to_template_value(j["content"]));
  }
  for (const auto& [k, v] : j.items()) {
    if (k != "role" && k != "content") m.fields.emplace_back(k, to_template_value(v));
  }
  return m;
}

inline OrderedJson load_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return OrderedJson::parse(ss.str());
}

// [year, month, day, hour, minute, second] -> std::tm (local, no DST info).
inline std::tm to_tm(const OrderedJson& j) {
  std::tm tm{};
  tm.tm_year = j[0].get<int>() - 1900;
  tm.tm_mon = j[1].get<int>() - 1;
  tm.tm_mday = j[2].get<int>();
  tm.tm_hour = j[3].get<int>();
  tm.tm_min = j[4].get<int>();
  tm.tm_sec = j[5].get<int>();
  std::tm copy = tm;
  timegm(&copy);  // fills tm_wday / tm_yday
  tm.tm_wday = copy.tm_wday;
  tm.tm_yday = copy.tm_yday;
  return tm;
}

}  // namespace cartserve::testing
