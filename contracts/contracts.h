#pragma once
// The cooperative economy's contracts: ccal.token (token.h), ccal.member
// (member.h), ccal.receivable (receivable.h),
// ccal.lc (letter_of_credit.h).

#include "contracts/letter_of_credit.h"
#include "contracts/loan.h"
#include "contracts/member.h"
#include "contracts/receivable.h"
#include "contracts/token.h"
#include "ledger/contract.h"

namespace ccal::contracts {

// Registers the three contracts (asserts none is registered yet).
void registerDealContracts(ContractRegistry& registry);

}  // namespace ccal::contracts
