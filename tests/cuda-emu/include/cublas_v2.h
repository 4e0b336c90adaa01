/* cuda-emu stand-in for the cuBLAS header: see ../emu.h */
#include "../emu.h"
