#pragma once

#define CARTSERVE_VERSION_STRING "0.1.0"
