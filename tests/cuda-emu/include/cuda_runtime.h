/* cuda-emu stand-in for the CUDA runtime header: see ../emu.h */
#include "../emu.h"
