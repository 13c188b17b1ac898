// Raw addresses from Python (torch's data_ptr(), validated there) as typed pointers.
#pragma once

#include <cstdint>

namespace spoco::bindings {

template <class T>
const T* cp(uintptr_t p) {
    return reinterpret_cast<const T*>(p);
}
template <class T>
T* mp(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

}  // namespace spoco::bindings
