#include "flows/flow.h"

namespace ccal::flows::detail {

Error errorOfException(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const FlowFailure& failure) {
    return failure.error();
  } catch (const std::exception& other) {
    return makeError(Errc::unavailable, std::string("the flow threw: ") + other.what());
  } catch (...) {
    return makeError(Errc::unavailable, "the flow threw an exception that is not a std::exception");
  }
}

}  // namespace ccal::flows::detail
