# medfl build. Everything is found by wildcard so that adding a module means adding a
# .h/.c pair, not editing this file:
#   common/*.c           -> build/libmedfl.a (shared by all programs and tests)
#   node/engine/*.cu     -> CUDA backend, only when nvcc is found and USE_CUDA != 0
#   node/*.c, node/engine/*.c -> bin/medfl-node (engine: the ML engine, node-only)
# Only programs that carry the engine (medfl-node, medfl-bench, the tests) link OpenBLAS and
# cuBLAS/cudart (ENGINE_LIBS); the aggregator and libmedfl.a are model-agnostic and link neither.
#   aggregator/*.c       -> bin/medfl-aggregator
#   tests/bench/*.c      -> bin/medfl-bench
#   tests/unit/test_*.c  -> build/tests/test_* (cmocka), run by `make test`
#   tests/integration/test_*.sh run by `make test` after the unit tests
#   tests/adversarial/adv_*.c  -> build/tests/adv_* (cmocka, like the unit tests) and
#   tests/adversarial/test_*.sh: the attack suite, `make test-adversarial` (also in `make test`)
#   tests/fuzz/fuzz_*.c  -> build/fuzz/fuzz_* (clang libFuzzer), `make fuzz`
# SANITIZE=1 builds the same tree with ASan+UBSan into build-san/ (binaries in build-san/bin).

SANITIZE ?= 0
USE_CUDA ?= 1

ifeq ($(SANITIZE),1)
BUILD ?= build-san
BIN   ?= build-san/bin
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD ?= build
BIN   ?= bin
SANFLAGS :=
endif

CC      ?= cc
PKGS    := libzmq libsodium hdf5-serial libprotobuf-c sqlite3 libcjson libmicrohttpd zlib
ENGINE_PKGS := openblas
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) $(ENGINE_PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ENGINE_BLAS := $(shell pkg-config --libs $(ENGINE_PKGS) 2>/dev/null)
ENGINE_LIBS := $(ENGINE_BLAS)

CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -pthread -I. -I$(BUILD) $(PKG_CFLAGS) $(SANFLAGS)
LDFLAGS += -pthread $(SANFLAGS)
LDLIBS  += $(PKG_LIBS) -lm

# CUDA toolkit: PATH first, then the usual install location.
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
ifneq ($(USE_CUDA),0)
ifneq ($(NVCC),)
HAVE_CUDA := 1
endif
endif
CU_SRC := $(wildcard node/engine/*.cu)
# Turing (T4), Ampere (A100/A10/A30), Hopper (H100) machine code + Hopper PTX that the driver
# JIT-compiles for newer GPUs; override with e.g. make CUDA_ARCH="-arch=native".
CUDA_ARCH ?= -gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 \
  -gencode arch=compute_86,code=sm_86 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90
ifeq ($(HAVE_CUDA),1)
CFLAGS  += -DMEDFL_HAVE_CUDA=1 -I$(CUDA_HOME)/include
# --no-as-needed: every engine program carries the GPU backend (ldd shows libcublas), even
# one that reaches it only through backend_new at run time
ENGINE_LIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -Wl,--no-as-needed -lcublas -lcudart -Wl,--as-needed
CU_OBJ  := $(patsubst %.cu,$(BUILD)/%.cu.o,$(CU_SRC))
CUDA_MSG := CUDA toolkit found at $(CUDA_HOME): building the cuBLAS backend
else
CU_OBJ  :=
CUDA_MSG := CUDA toolkit not used (USE_CUDA=$(USE_CUDA), nvcc '$(NVCC)'): CPU backend only
endif

PROTO_C := $(BUILD)/proto/medfl.pb-c.c
PROTO_H := $(BUILD)/proto/medfl.pb-c.h
COMMON_SRC := $(wildcard common/*.c)
COMMON_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(COMMON_SRC)) $(BUILD)/proto/medfl.pb-c.o
# node/engine/*.c, *.cu: the ML engine (model families, backends, tokenizers, model files),
# node-only
NODE_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard node/*.c node/engine/*.c)) $(CU_OBJ)
AGG_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(wildcard aggregator/*.c))
BENCH_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/bench/*.c))
# Programs' modules other than main.c are linked into unit tests too.
NODE_LIB_OBJ := $(filter-out $(BUILD)/node/main.o,$(NODE_OBJ))
AGG_LIB_OBJ  := $(filter-out $(BUILD)/aggregator/main.o,$(AGG_OBJ))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
ADV_SRC  := $(wildcard tests/adversarial/adv_*.c)
ADV_BIN  := $(patsubst tests/adversarial/%.c,$(BUILD)/tests/%,$(ADV_SRC))
LIB := $(BUILD)/libmedfl.a

PROGRAMS := $(BIN)/medfl-node $(BIN)/medfl-aggregator $(BIN)/medfl-bench

.PHONY: all deps test unit integration test-adversarial bench demo fuzz clean cuda-info
all: cuda-info $(PROGRAMS)

cuda-info:
	@echo "medfl: $(CUDA_MSG)"

deps:
	@bash deploy/install-deps.sh

$(PROTO_C) $(PROTO_H) &: proto/medfl.proto
	@mkdir -p $(BUILD)/proto
	protoc-c --c_out=$(BUILD) proto/medfl.proto

# Every object may include the generated protocol header.
# V=1 shows full command lines.
Q := $(if $(V),,@)
$(BUILD)/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/proto/medfl.pb-c.o: $(PROTO_C)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(filter-out -Werror,$(CFLAGS)) -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  NVCC    $<")
	$(Q)$(NVCC) -O2 -std=c++17 -I. -Xcompiler -fPIC,-fno-threadsafe-statics,-fno-exceptions,-Wall,-Wextra -Werror all-warnings $(CUDA_ARCH) -MD -MP -MF $@.d -c $< -o $@

$(LIB): $(COMMON_OBJ)
	@rm -f $@
	@$(if $(V),,echo "  AR      $@")
	$(Q)ar rcs $@ $^

$(BIN)/medfl-node: $(NODE_OBJ) $(LIB)
	@mkdir -p $(BIN)
	@$(if $(V),,echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(ENGINE_LIBS) $(LDLIBS)

$(BIN)/medfl-aggregator: $(AGG_OBJ) $(LIB)
	@mkdir -p $(BIN)
	@$(if $(V),,echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/medfl-bench: $(BENCH_OBJ) $(NODE_LIB_OBJ) $(AGG_LIB_OBJ) $(LIB)
	@mkdir -p $(BIN)
	@$(if $(V),,echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(ENGINE_LIBS) $(LDLIBS)

# tests/unit/testlib.c: fixture helpers shared by the unit tests, and fedlib.c: the in-process
# federation harness; linked into each unit and attack-suite test.
TESTLIB_OBJ := $(BUILD)/tests/unit/testlib.o $(BUILD)/tests/unit/fedlib.o
.SECONDARY: $(TESTLIB_OBJ)
$(BUILD)/tests/test_%: $(BUILD)/tests/unit/test_%.o $(TESTLIB_OBJ) $(NODE_LIB_OBJ) $(AGG_LIB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(ENGINE_LIBS) $(LDLIBS) -lcmocka

$(BUILD)/tests/adv_%: $(BUILD)/tests/adversarial/adv_%.o $(TESTLIB_OBJ) $(NODE_LIB_OBJ) $(AGG_LIB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(ENGINE_LIBS) $(LDLIBS) -lcmocka

unit: all $(UNIT_BIN)
	@MEDFL_BIN=$(abspath $(BIN)) bash tests/run-unit.sh $(UNIT_BIN)

integration: all
	@MEDFL_BIN=$(abspath $(BIN)) bash tests/run-integration.sh

# The attack suite: a malicious node against a real aggregator, a malicious aggregator
# against real nodes (tests/adversarial/README.md).
test-adversarial: all $(ADV_BIN)
	@MEDFL_BIN=$(abspath $(BIN)) bash tests/run-unit.sh $(ADV_BIN)
	@MEDFL_BIN=$(abspath $(BIN)) TESTS_DIR=tests/adversarial bash tests/run-integration.sh

test: deps
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory test-adversarial

bench: deps
	@$(MAKE) --no-print-directory all
	@bash tests/bench/run-all.sh $(BIN)/medfl-bench

demo: deps
	@$(MAKE) --no-print-directory all
	@bash deploy/demo.sh

# libFuzzer targets need clang; they link the library sources directly (not $(LIB), which
# may be built by another compiler) with the fuzzer and sanitizer instrumentation.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(FUZZ_SRC))
# Library objects are instrumented with fuzzer-no-link (coverage without a main) and built
# once; each target then links its harness with -fsanitize=fuzzer.
FUZZ_SAN := -fsanitize=address,undefined
FUZZ_CFLAGS := -std=c11 -g -O1 -D_GNU_SOURCE -pthread -I. -Ibuild-fuzz $(PKG_CFLAGS) $(FUZZ_SAN)
FUZZ_LIB_SRC := $(COMMON_SRC) $(filter-out node/main.c,$(wildcard node/*.c node/engine/*.c)) \
                $(filter-out aggregator/main.c,$(wildcard aggregator/*.c))
FUZZ_LIB_OBJ := $(patsubst %.c,build-fuzz/obj/%.o,$(FUZZ_LIB_SRC)) build-fuzz/obj/proto/medfl.pb-c.o
fuzz: $(FUZZ_BIN)
.SECONDARY: $(FUZZ_LIB_OBJ)
build-fuzz/proto/medfl.pb-c.c build-fuzz/proto/medfl.pb-c.h &: proto/medfl.proto
	@mkdir -p build-fuzz/proto
	protoc-c --c_out=build-fuzz proto/medfl.proto
build-fuzz/obj/%.o: %.c build-fuzz/proto/medfl.pb-c.h
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CLANG   $<")
	$(Q)clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
build-fuzz/obj/proto/medfl.pb-c.o: build-fuzz/proto/medfl.pb-c.c
	@mkdir -p $(dir $@)
	$(Q)clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	@$(if $(V),,echo "  FUZZ    $@")
	$(Q)clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(ENGINE_BLAS) $(PKG_LIBS) -lm

clean:
	rm -rf build build-san build-fuzz bin

-include $(shell find $(BUILD) build-fuzz -name '*.d' 2>/dev/null)
