# The two commands of the README:
#   make demo   installs, builds and runs the demo server
#   make test   installs, builds and passes every test
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: setup build demo test unit bench fixtures format clean fuzz test-sanitize

setup:
	scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	scripts/demo.sh $(BUILD)

test: build
	scripts/run_tests.sh $(BUILD)

bench: build
	scripts/run_bench.sh $(BUILD)

# libFuzzer (clang, ASan + UBSan): every parser target for FUZZ_SECONDS each.
FUZZ_SECONDS ?= 600
fuzz: setup
	scripts/run_fuzz.sh $(FUZZ_SECONDS)

# The unit tests and fuzz smokes built with ASan + UBSan (gcc); any report fails.
# Only those targets are built, at -Og with line tables: gcc's -O2 -g with both
# sanitizers compiles about 2.7 times slower and the build would not fit CI.
SAN_BUILD ?= build-san
SAN_OPT ?= -Og -g1 -DNDEBUG
test-sanitize: setup
	cmake -S . -B $(SAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCARTSERVE_SANITIZE=ON \
	  -DCMAKE_C_FLAGS_RELWITHDEBINFO="$(SAN_OPT)" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$(SAN_OPT)" \
	  -DCARTSERVE_CUDA=OFF -DCARTSERVE_BENCH=OFF $(CMAKE_FLAGS)
	cmake --build $(SAN_BUILD) -j $(JOBS) --target unit_tests fuzz_smokes
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(SAN_BUILD) --output-on-failure -j $(JOBS) -L 'unit|fuzz'

format:
	find src tests bench -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
