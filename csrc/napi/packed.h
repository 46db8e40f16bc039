// The packer and packed-store entry points (csrc/napi/packed.cc).
#pragma once

#include <napi.h>

#include "addon.h"

namespace sh::napi {

// Adds packMatrix, unpackMatrix and the packed* kernel calls to the addon's exports.
void RegisterPacked(Addon& addon, Napi::Env env, Napi::Object exports);

}  // namespace sh::napi
